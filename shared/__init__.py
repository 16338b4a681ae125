"""The common library of the SCoRe distillation services.

Wire schemas, settings, the agent format, sandboxed tools, task suites and
scoring, model loading (tiny built-in models and engines) and an embedded
Redis. Every service imports from here; nothing here imports a service.
"""
