"""Task base class, result ``Struct`` and ``timeMethod`` (after LSST pipe_base)."""

from __future__ import annotations

import functools
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, ClassVar

from .config import Config

__all__ = ["ExposureIdInfo", "Struct", "Task", "TaskError", "timeMethod"]


class TaskError(RuntimeError):
    """A task failed for a reason that is not a bug (bad data, too few stars, ...)."""


class Struct:
    """A simple attribute container, like ``lsst.pipe.base.Struct``.

    Examples
    --------
    >>> s = Struct(exposure=None, background=[])
    >>> s.background
    []
    """

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def getDict(self) -> dict[str, Any]:
        """Return the attributes as a dict."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return "Struct(" + ", ".join(f"{k}={v!r}"[:80] for k, v in self.__dict__.items()) + ")"


class Task:
    """Base class for configurable tasks with sub-tasks, logging and metadata.

    Parameters
    ----------
    config : `Config`, optional
        Configuration; defaults to ``ConfigClass()``.  Ignored when ``parentTask``
        is given, in which case the parent's ``config.<name>`` is used.
    name : `str`, optional
        Task name; defaults to ``_DefaultName``.
    parentTask : `Task`, optional
        The parent task of a sub-task.
    log : `logging.Logger`, optional
        Logger to use; defaults to ``logging.getLogger("calexpress.<full name>")``.
    """

    ConfigClass: ClassVar[type[Config]] = Config
    _DefaultName: ClassVar[str] = "task"

    def __init__(
        self,
        config: Config | None = None,
        name: str | None = None,
        parentTask: Task | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self._name = name or self._DefaultName
        self._parentTask = parentTask
        if parentTask is not None:
            self._fullName = f"{parentTask._fullName}.{self._name}"
            if config is None:
                config = getattr(parentTask.config, self._name)
        else:
            self._fullName = self._name
            if config is None:
                config = self.ConfigClass()
        self.config = config
        self.log = log or logging.getLogger(f"calexpress.{self._fullName}")
        self.metadata: dict[str, Any] = {}
        self._taskDict: dict[str, Task] = {self._fullName: self}
        if parentTask is not None:
            parentTask._taskDict[self._fullName] = self

    def getName(self) -> str:
        """Return the task's name (the last part of the full name)."""
        return self._name

    def getFullName(self) -> str:
        """Return the dotted task path, e.g. ``processCcd.charImage.detection``."""
        return self._fullName

    def getTaskDict(self) -> dict[str, Task]:
        """Return every task of this hierarchy by full name."""
        return dict(self._taskDict)

    def makeSubtask(self, name: str, **kwargs: Any) -> Task:
        """Create the sub-task configured by ``self.config.<name>`` (a ConfigurableField).

        Parameters
        ----------
        name : `str`
            Name of the ``ConfigurableField``; becomes ``self.<name>``.
        **kwargs
            Passed to the sub-task's constructor.
        """
        field = getattr(self.config, name)
        sub = field.apply(name=name, parentTask=self, **kwargs)
        setattr(self, name, sub)
        self._taskDict.update(sub._taskDict)
        if self._parentTask is not None:
            root = self._parentTask
            while root is not None:
                root._taskDict.update(sub._taskDict)
                root = root._parentTask
        return sub

    def getFullMetadata(self) -> dict[str, dict[str, Any]]:
        """Return the metadata of every task in the hierarchy by full name."""
        return {name: dict(task.metadata) for name, task in self._taskDict.items()}


def _usage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "CpuTime": time.process_time(),
        "UserTime": ru.ru_utime,
        "SystemTime": ru.ru_stime,
        "MaxResidentSetSize": float(ru.ru_maxrss),
    }


def timeMethod(func: Callable) -> Callable:
    """Record start/end times and resource use of a task method in ``self.metadata``.

    Adds ``<method>StartUtc``, ``<method>EndUtc``, ``<method>StartCpuTime``,
    ``<method>EndCpuTime`` and friends, as LSST's ``@timeMethod`` does, plus
    ``<method>Duration`` (wall seconds).
    """

    @functools.wraps(func)
    def wrapper(self: Task, *args: Any, **kwargs: Any) -> Any:
        name = func.__name__
        t0 = time.time()
        for key, value in _usage().items():
            self.metadata[f"{name}Start{key}"] = value
        self.metadata[f"{name}StartUtc"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0))
        try:
            return func(self, *args, **kwargs)
        finally:
            t1 = time.time()
            for key, value in _usage().items():
                self.metadata[f"{name}End{key}"] = value
            self.metadata[f"{name}EndUtc"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t1))
            self.metadata[f"{name}Duration"] = t1 - t0

    return wrapper


class ExposureIdInfo:
    """Exposure id and the number of bits it uses, for making source ids.

    Parameters
    ----------
    expId : `int`
        Exposure (or CCD-exposure) id.
    expBits : `int`
        Bits reserved for ``expId``; source ids are ``(expId << (64 - expBits)) + n``.
    """

    def __init__(self, expId: int = 0, expBits: int = 32) -> None:
        if expBits < 1 or expBits > 63:
            raise ValueError(f"expBits must be in 1..63, not {expBits}")
        if expId >= 1 << expBits:
            raise ValueError(f"expId {expId} does not fit in {expBits} bits")
        self.expId = int(expId)
        self.expBits = int(expBits)

    @classmethod
    def from_data_id(cls, data_id: dict, camera: Any = None) -> ExposureIdInfo:
        """The exposure id of a CCD's data ID, as the camera defines it.

        A camera may provide ``exposure_id_info(data_id)``; otherwise the id is
        ``visit`` for a one-detector camera and ``visit * n_detectors + ccd``
        for a mosaic, with ``camera.exposure_id_bits`` bits (41 by default, as
        LSST's obs_test: source ids ``(visit << 23) + n``).
        """
        maker = getattr(camera, "exposure_id_info", None)
        if callable(maker):
            return maker(dict(data_id))
        visit = int(data_id.get("visit", 0) or 0)
        ccd = int(data_id.get("ccd", 0) or 0)
        n_det = len(getattr(camera, "detectors", None) or {}) or 1
        bits = int(getattr(camera, "exposure_id_bits", None) or 41)
        return cls(visit * n_det + ccd if n_det > 1 else visit, bits)

    @classmethod
    def from_data_ref(cls, dataRef: Any) -> ExposureIdInfo:
        """`from_data_id` for a butler data reference (uses its butler's camera)."""
        camera = getattr(getattr(dataRef, "butler", None), "camera", None)
        return cls.from_data_id(dict(dataRef.dataId), camera)

    @property
    def unusedBits(self) -> int:
        """Bits left for the per-source counter."""
        return 64 - self.expBits

    def make_ids(self, n: int, start: int = 1):
        """Return ``n`` source ids ``(expId << unusedBits) + start, ...`` as int64."""
        import numpy as np

        base = self.expId << self.unusedBits if self.unusedBits < 63 else 0
        return (np.arange(start, start + n, dtype=np.int64) + np.int64(base)).astype(np.int64)
