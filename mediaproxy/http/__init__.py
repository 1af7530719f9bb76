"""The HTTP side: the backend client (pass-through and source fetches), its breakers, retries
and limits, the SSRF guard, streaming requests, listening, and the JSON error shape."""
