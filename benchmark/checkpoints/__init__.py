"""Per-experience checkpoints: an interrupted run resumes from its last complete experience.

After every experience the runner writes ``<out>/checkpoints/<run>/task-<k>.pt`` (``<run>``
is the record's file name without ``.json``, ``k`` the tasks trained so far). A checkpoint holds
everything the rest of the run depends on, so that the resumed run's record equals an
uninterrupted run's (timing fields aside: ``benchmark.records.TIMING_FIELDS``):

- the run's settings (:func:`fingerprint`): scenario, strategy, seed, tag, the record's
  ``params``, the versions, the device and torch's thread count. A rerun whose settings differ
  is refused up front (:func:`check_command`), naming the first differing key;
- the record's rows so far (accuracy, history, epochs, seconds, memory, ...);
- the model's ``state_dict`` (HAT's embeddings and cumulative masks, PackNet masks, PNN
  columns, PathNet paths are all in it), which parameters have ``requires_grad``, and each
  module's own attributes outside the state dict (training flags, Avalanche's known task
  labels, HAT's current gates, the masks ``benchmark.networks.Dropout`` draws ahead and how
  far it has used them);
- the optimizer's ``state_dict`` with its parameters by name, and Avalanche's
  ``optimized_param_id`` (so the optimizer state is kept as Avalanche keeps it);
- every plugin's state and the strategy's own attributes (those a plain Avalanche template
  does not have), pickled with ``torch.save`` in one blob (:func:`capture`): EWC's Fishers and
  anchors, SI's importances, LwF's teacher, IMM's sums, rehearsal memories, Avalanche's clock.
  References to the live strategy, model, its modules, parameters and buffers (and tensors
  that are views of them), the optimizer and the plugins are written as placeholders and
  re-linked to the resumed run's objects on load. The runner's own plugins (data loading,
  the recipe, history, accuracy, memory) keep nothing across experiences and are left out;
- every RNG: torch's (and CUDA's on a GPU), numpy's and Python's global states, from which
  the recipe's data order and every other draw follow (the recipe's validation split is
  seeded by the run's seed and the task). ``torch.Generator`` objects a plugin holds are
  pickled with their state.

Resuming (:func:`resume`): the runner builds the strategy as a new run does (same seed,
same construction), then loads the model, optimizer, plugin and strategy state into it
(:func:`restore`), reads the test sets once (their first read draws from the global RNG:
the uninterrupted run did that after task 1) and sets the RNG states last.

Avalanche's own checkpointing (``avalanche.checkpointing.save_checkpoint``) dill-pickles the
whole strategy object, its datasets, loggers and the runner's callbacks with it, for
``maybe_load_checkpoint`` to return in place of a new strategy. Here the runner builds the
strategy as a new run does and loads only state into it: callbacks, loggers and the W&B
tracker stay those of the resuming process, and no dataset is written.

State that cannot be checkpointed fails loudly, naming the plugin and attribute: an object
that does not pickle (a lambda, an open iterator or generator), or an Avalanche experience,
stream or ``DataLoader`` held across experiences (:class:`CheckpointError`). A plugin can
name attributes that hold only per-experience scratch, left out of checkpoints, in a class
attribute ``checkpoint_transient`` (a tuple of names, ``strategies.common.hooks``).

Writes are atomic (a temporary file in the same folder, fsync, ``os.replace``, fsync of the
folder); the previous checkpoint is deleted only once the new one is in place, so a kill at
any moment leaves a complete checkpoint. For tests, ``HATBENCH_KILL_AFTER_TASK=k`` makes the
process SIGKILL itself right after the checkpoint of task ``k`` is written (:func:`after_save`).

Modules: ``store`` (paths, settings, atomic writes, the runner's ``RunCheckpoints`` and
``resume``, the fault injector), ``state`` (``capture``/``restore``, the relinking pickler),
``rng`` (the RNG states).
"""


from .state import TEMPLATE_ATTRIBUTES, CheckpointError, capture, restore
from .store import (
    FOLDER,
    KILL_ENV,
    RunCheckpoints,
    after_save,
    check_command,
    checkpoint_path,
    discard,
    fingerprint,
    latest,
    read,
    remove,
    resume,
    run_folder,
    saved_extra,
    write,
)

__all__ = [
    "FOLDER", "KILL_ENV", "TEMPLATE_ATTRIBUTES", "CheckpointError", "RunCheckpoints",
    "after_save", "capture", "check_command", "checkpoint_path", "discard", "fingerprint",
    "latest", "read", "remove", "restore", "resume", "run_folder", "saved_extra", "write",
]
