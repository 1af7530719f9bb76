"""The built-in features. Each module is a plugin, registered by name like a third party's
(see :data:`mediaproxy.manager.DEFAULT_PLUGINS`) and disabled the same way."""
