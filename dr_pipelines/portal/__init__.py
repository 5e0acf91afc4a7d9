"""The clinics' self-service export portal: an HTTP API (Starlette on uvicorn) above core's export code.

Layering: the portal imports dr_pipelines.core; core never imports the portal. See docs/portal.md.
"""
