"""The four service apps built from their factories, as the API-level tests use them: no stage workers, jobs
that stay queued, the scripted teacher, the built-in student on CPU."""

from __future__ import annotations

from shared.sandbox.limits import SandboxLimits
from shared.settings import Settings

SERVICES = ("coordinator", "student", "teacher", "trainer")


def build_app(service: str, home, redis_url: str | None = None, *, api_token: str | None = None, **settings):
    settings = Settings(home=home, redis_url=redis_url, api_token=api_token, **settings)
    if service == "coordinator":
        from services.coordinator.app import create_app
        from services.coordinator.config import CoordinatorConfig

        # No stage workers: created runs stay queued and nothing calls the model services.
        return create_app(CoordinatorConfig(workers=0, settings=settings))
    if service == "student":
        from services.student.app import create_app
        from services.student.config import StudentConfig

        return create_app(StudentConfig(settings=settings, device="cpu", sandbox=SandboxLimits(step_timeout_s=2.0)))
    if service == "teacher":
        from services.teacher.app import create_app
        from services.teacher.config import TeacherConfig

        return create_app(TeacherConfig(engine="expert", settings=settings, sandbox=SandboxLimits(step_timeout_s=2.0)))
    if service == "trainer":
        from services.trainer.app import create_app
        from services.trainer.config import TrainerConfig

        # Jobs stay queued: no training process starts whatever the request says.
        return create_app(TrainerConfig(settings=settings, device="cpu", max_running_jobs=0))
    raise ValueError(f"unknown service {service!r}")
