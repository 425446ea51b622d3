"""lamina: load a .lam model, compile it once, run it on numpy arrays.

Copies: an input array is copied once into lamina's own tensor (any strides,
one pass); an output array takes over the buffer lamina produced (no copy).
"""

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, final

import numpy as np
import numpy.typing as npt

__version__: str

_Path = str | os.PathLike[str]
_Weights = _Path | bytes | Mapping[str, npt.ArrayLike] | None

def load(
    path: _Path,
    *,
    weights: _Weights = None,
    backend: Literal["jit", "interp"] = "jit",
    threads: int | None = None,
    isa: Literal["avx512", "avx2", "baseline"] | None = None,
    max_memory: int | str | None = None,
    bind: Mapping[str, int] | None = None,
    tokenizer: _Path | None = None,
    max_tokens: int = 128,
) -> Model:
    """Loads a .lam file, binds its weights and compiles it (GIL released).

    weights: None for the model's own file (`weights "..."` in the model, else
    `<stem>.safetensors` beside it), a safetensors path, its bytes, or a
    mapping of parameter names to arrays.
    threads: JIT worker threads (None: all cores); results do not depend on it.
    isa: the JIT's kernel tier (None: LAMINA_ISA if set, else the CPU's best).
    max_memory: bytes, or a size like "2G" (None: 3/4 of RAM).
    bind: symbol values fixed before any input is seen, e.g. {"batch": 8}.
    tokenizer: tokenizer.json for `run(text=...)` (None: beside the model,
    else beside the weights); texts are truncated to max_tokens tokens.

    Raises a LaminaError subclass with lamina's rendered diagnostics.
    """

def from_source(
    source: str,
    *,
    path: _Path = "<string>",
    weights: _Weights = None,
    backend: Literal["jit", "interp"] = "jit",
    threads: int | None = None,
    isa: Literal["avx512", "avx2", "baseline"] | None = None,
    max_memory: int | str | None = None,
    bind: Mapping[str, int] | None = None,
    tokenizer: _Path | None = None,
    max_tokens: int = 128,
) -> Model:
    """Like load, for model text in a string; `path` names it in messages and
    is where conventional files (weights, tokenizer) are looked for."""

@final
class TensorInfo:
    """A declared model input or output."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def shape(self) -> tuple[int | str, ...]:
        """An int per known dim, the symbol (e.g. "batch", "12*seq") per symbolic one."""

@final
class Model:
    """A compiled model. Share it between threads: `run` releases the GIL."""

    def run(
        self,
        inputs: Mapping[str, npt.ArrayLike] | None = None,
        *,
        text: str | Sequence[str] | None = None,
    ) -> dict[str, np.ndarray[Any, np.dtype[Any]]]:
        """Runs the model; returns its outputs by name, in declaration order.

        inputs: input names to numpy arrays of the declared dtype (float32,
        int64, int32, bool; a wrong dtype raises InputError); anything not an
        ndarray is converted with numpy.asarray to the declared dtype.
        text: sentences that fill `input_ids` (and `attention_mask`,
        `token_type_ids` when the model declares them) via the tokenizer.
        """

    @property
    def inputs(self) -> list[TensorInfo]: ...
    @property
    def outputs(self) -> list[TensorInfo]: ...
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def backend(self) -> Literal["jit", "interp"]: ...
    @property
    def threads(self) -> int: ...
    @property
    def weights_path(self) -> pathlib.Path | None: ...
    @property
    def unused_weights(self) -> list[str]: ...

class LaminaError(Exception):
    """Any lamina failure; str(e) is the rendered diagnostics the CLI prints."""

class ModelError(LaminaError):
    """The model text does not parse or type-check."""

class OptionsError(LaminaError):
    """A compile option does not fit (backend, threads, isa, max_memory, bind)."""

class WeightsError(LaminaError):
    """The weights cannot be read or do not fit the model's parameters."""

class InputError(LaminaError):
    """An input is missing, unknown, or of the wrong dtype or shape."""

class TextError(LaminaError):
    """Text cannot be tokenized: no tokenizer, or no `input_ids` input."""

class CompileError(LaminaError):
    """The JIT could not compile the model."""

class RunError(LaminaError):
    """The model failed while running; the message names the node and line."""
