"""The model calls of `Client`: the registered model versions, and a few images generated right away to try
one (a preview) before a bulk job."""

from __future__ import annotations

from typing import Any

from scheduler.client.connection import Connection
from scheduler.client.results import Model, PreviewImage


class ModelCalls(Connection):
    """The calls of `Client` on models: list them, preview one."""

    def list_models(self) -> list[Model]:
        """Every registered model version."""
        body = self._call("GET", "/v1/models")
        return [
            Model(m["name"], m["version"], m["status"], m.get("categories", []), m.get("metrics", {}))
            for m in body["data"]
        ]

    def preview(
        self,
        category: str,
        *,
        count: int = 4,
        model: str | None = None,
        seed: int | None = None,
        truncation: float | None = None,
    ) -> list[PreviewImage]:
        """Up to 8 images generated right away, to try a model before a bulk job.

        `truncation`: ψ in 0.3..1.0 as `submit_job` takes it (None or 1.0 is off); with a `seed`, image i is
        image i of a job submitted with the same model, seed, category and ψ.
        """
        import base64

        spec: dict[str, Any] = {"category": category, "count": count}
        if model:
            spec["model"] = model
        if seed is not None:
            spec["seed"] = seed
        if truncation is not None:
            spec["truncation"] = truncation
        body = self._call("POST", "/v1/previews", json=spec)
        return [
            PreviewImage(i["index"], i["category"], i["sha256"], base64.b64decode(i["png_base64"]))
            for i in body["images"]
        ]
