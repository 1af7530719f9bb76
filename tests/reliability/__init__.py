"""The reliability suite: attacks and faults against a real proxy process while normal traffic
runs, with the figures of docs/reliability.md. Run it with ``python -m tests.reliability``
(``--quick`` on CI); it is not collected by pytest (no ``test_*`` modules here)."""
