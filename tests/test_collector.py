"""The manager's GC schedule (runtime/manager/collector.py), in this process: what it freezes and reports."""
from __future__ import annotations

import gc

from runtime.manager.collector import Collector


def test_scheduled_collector_freezes_what_survives_and_reports_pauses() -> None:
    c = Collector(interval=300.0)
    try:
        c.install()
        assert gc.get_freeze_count() > 0, "the startup pass must freeze what startup built"
        gc.collect()
        metrics = "\n".join(c.metric_lines())
        assert c.collections[2] >= 2 and c.scheduled == 1
        assert 'relay_gc_collections_total{generation="2"}' in metrics
        assert f"relay_gc_frozen_objects {gc.get_freeze_count()}" in metrics
    finally:
        c.uninstall()
    assert gc.get_freeze_count() == 0, "uninstall hands every object back to the collector"
    assert c._callback not in gc.callbacks


def test_interval_zero_keeps_cpythons_schedule() -> None:
    c = Collector(interval=0.0)
    try:
        c.install()
        assert gc.get_freeze_count() == 0 and c.scheduled == 0
        gc.collect()
        assert c.collections[2] == 1, "pauses are still measured"
    finally:
        c.uninstall()
