"""The HTTP face: problem responses, the authenticated route, parameters, limits, OpenAPI, health."""
