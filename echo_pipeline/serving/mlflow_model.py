"""MLflow "model from code" for an echo adapter: logged without pickling anything.

``mlflow.pyfunc.load_model(uri).predict(["prompt", ...])`` returns the adapter's replies,
rendered with the adapter's own training template and stopped at its EOS. An adapter trained
with reply memory retrieves each prompt's examples as training did (``ChatSession.from_adapter``
reads ``memory_k`` and the index from the adapter's dataset manifest); the index is read from
the data folder the adapter was trained in, not from the logged artifacts, so the model loads
with memory only where that folder is.
"""

from __future__ import annotations

from typing import Any

import mlflow


class EchoAdapterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from echo_pipeline.infra.records import AdapterMetadata
        from echo_pipeline.serving.chat import ChatSession
        from echo_pipeline.serving.generation import GenerationSettings

        self.session_dir = context.artifacts["adapter"]
        # As evaluated: sampled at the adapter's own temperature, with the loop guard.
        calibrated = AdapterMetadata.load(self.session_dir).calibrated_temperature
        decoding = GenerationSettings().for_adapter(calibrated).generate_kwargs()
        self._chat = ChatSession.from_adapter(
            self.session_dir, max_new_tokens=decoding.pop("max_new_tokens"), decoding=decoding
        )

    @property
    def memory_k(self) -> int:
        """Examples each prompt gets (0: the adapter was trained without reply memory)."""
        memory = self._chat.memory
        return memory.k if memory is not None else 0

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return [self._chat.reply_once(str(p)) for p in model_input]


mlflow.models.set_model(EchoAdapterModel())
