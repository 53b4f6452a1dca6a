"""The unit of a corpus: a named text, or a prompt/completion pair."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """A named text; for a pair, `text` is prompt + completion and only the completion
    carries loss when tokenized."""

    name: str
    text: str
    prompt: str | None = None
    completion: str | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) != (self.completion is None):
            raise ValueError(f"{self.name}: give both prompt and completion, or neither")
        if self.is_pair and self.text != self.prompt + self.completion:
            raise ValueError(f"{self.name}: text must equal prompt + completion")

    @classmethod
    def pair(cls, name: str, prompt: str, completion: str) -> "Document":
        """Build a prompt/completion document; only the completion is trained on."""
        return cls(name=name, text=prompt + completion, prompt=prompt, completion=completion)

    @property
    def is_pair(self) -> bool:
        """True for a prompt/completion pair."""
        return self.prompt is not None
