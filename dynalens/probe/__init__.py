"""probe: hooks, the Recorder, the store, and (later) interventions."""

from dynalens.probe.schedules import AtSteps, Every, LogSpaced, Predicate, Schedule

__all__ = ["AtSteps", "Every", "LogSpaced", "Predicate", "Schedule"]
