"""Which public model names are served, by which engine, and whether that is a stand-in.

A stand-in is honest about itself: when `step-3.7-flash` is answered by the embedded Qwen
model, the catalog says so, and so do `/v1/models`, the response headers and the startup log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stepflash.config import StepPlanSettings
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.engines.base import Engine


@dataclass(frozen=True, slots=True)
class ServedModel:
    id: str
    engine: Engine
    stand_in_for: str | None = None
    routed_from: str | None = None  # the Step Plan routing model that picked this one
    image_detail: str = "high"  # when the caller gives none

    @property
    def backend(self) -> str:
        """`kind/model`, e.g. `embedded/qwen2.5-coder-1.5b-instruct-q4_k_m`."""
        return f"{self.engine.kind}/{self.engine.model_name}"

    @property
    def note(self) -> str:
        if self.stand_in_for:
            return (
                f"stand-in: {self.stand_in_for} is answered by {self.backend}, "
                f"not by the real {self.stand_in_for}"
            )
        return f"served by {self.backend}"


class ModelCatalog:
    """Served names → models, plus the Step Plan routing model when candidates are configured.

    Step Plan policy: the routing model (`step-router-v1` by default) is served by the first
    of `step_plan.candidates` whose engine is available (for a router: at least one replica
    not benched); if none is, by the first candidate, so the caller gets its real error.
    """

    def __init__(
        self, models: list[ServedModel], step_plan: StepPlanSettings | None = None
    ) -> None:
        self._models = {model.id: model for model in models}
        self._step_plan = step_plan if step_plan and step_plan.candidates else None

    def get(self, name: str) -> ServedModel:
        if self._step_plan is not None and name == self._step_plan.router_model:
            return self._route(name, self._step_plan.candidates)
        model = self._models.get(name)
        if model is None:
            available = ", ".join(self._models)
            raise StepflashError(
                ErrorKind.NOT_FOUND,
                f"the model {name!r} does not exist; available models: {available}",
                param="model",
                code="model_not_found",
            )
        return model

    def _route(self, name: str, candidates: list[str]) -> ServedModel:
        choices = [self._models[candidate] for candidate in candidates]
        chosen = next((model for model in choices if model.engine.available), choices[0])
        return replace(chosen, routed_from=name)

    def all(self) -> list[ServedModel]:
        models = list(self._models.values())
        if self._step_plan is not None:
            models.append(self.get(self._step_plan.router_model))
        return models

    def engines(self) -> list[Engine]:
        unique = {id(model.engine): model.engine for model in self._models.values()}
        return list(unique.values())


def embedded_catalog(engine: Engine, served_as: list[str]) -> ModelCatalog:
    """The embedded model under its own name, and as a stand-in for each configured name."""
    models = [ServedModel(name, engine, stand_in_for=name) for name in served_as]
    if engine.model_name not in served_as:
        models.append(ServedModel(engine.model_name, engine))
    return ModelCatalog(models)
