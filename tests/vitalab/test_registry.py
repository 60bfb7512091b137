"""Everything that names a device kind or a sample field agrees with the one registry
(``vitalab.wire.registry``): what is derived from it is checked here once, and what must be written out
(the type checker's ``Literal``, the ``Sample`` struct, the SQL schema, the simulator's devices, the
gateway's decoders' mappings) is checked against it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import msgspec
import psycopg

from analytics import batch
from api import models
from gateway import normalize, transport, transport_ble
from gateway.ftms import CrossTrainerData, IndoorBikeData, RowerData, TreadmillData
from gateway.service import FE_KIND
from simulators import fleet, gymfleet, rawdev
from vitalab.wire import payload, registry


def test_kind_names_are_one_list() -> None:
    names = registry.KIND_NAMES
    assert len(set(names)) == len(names)
    assert get_args(registry.DeviceKind) == names
    assert get_args(payload.DeviceKind) == names
    assert names == batch.KINDS  # analytics kind codes: the registry's order


def test_fields_are_the_sample_struct_in_order_with_the_same_bounds() -> None:
    assert payload.Sample.__struct_fields__ == ("t", *(f.name for f in registry.FIELDS))
    assert payload.METRIC_FIELDS == registry.METRIC_FIELD_NAMES
    bounds = normalize.BOUNDS  # read back from the msgspec struct, not from the registry
    for f in registry.FIELDS:
        assert bounds[f.name] == (f.lo, f.hi), f.name
        assert f.kinds <= set(registry.KIND_NAMES), f.name
    for name in registry.KIND_NAMES:
        assert registry.fields_of(name), f"{name} carries no field"


def test_out_of_range_values_are_refused_by_the_wire_decoder() -> None:
    t = "2026-11-25T10:00:00Z"
    for f in registry.FIELDS:
        for value, ok in ((f.lo, True), (f.hi, True), (f.lo - 1, False), (f.hi + 1, False)):
            v: object = [value] if f.type == "float_list" else value
            raw = msgspec.json.encode({"t": t, f.name: v})
            try:
                msgspec.json.decode(raw, type=payload.Sample)
            except msgspec.ValidationError:
                assert not ok, (f.name, value)
            else:
                assert ok, (f.name, value)


def test_schema_columns_and_kind_check_match(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        cols = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'samples'"
            )
        }
        check = conn.execute(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE t.relname = 'devices' AND c.contype = 'c' AND pg_get_constraintdef(c.oid) LIKE '%kind%'"
        ).fetchone()
    for name in registry.METRIC_FIELD_NAMES:
        assert name in cols, f"samples has no column {name}"
    assert check is not None
    listed = {part.split("'")[1] for part in check[0].split("::text")[:-1] if "'" in part}
    assert listed == set(registry.KIND_NAMES)


def test_gateway_maps_come_from_the_registry() -> None:
    assert set(transport.KINDS) == set(registry.KIND_NAMES)
    for kind in registry.KINDS:
        for char in kind.ble_data:
            assert transport.kind_of_source(f"ble:{char}") == kind.name
        assert transport_ble.CHARACTERISTICS.get(kind.name, ()) == kind.ble
        if kind.ant_fe is not None:
            assert FE_KIND[kind.ant_fe] == kind.name
    # what the FTMS decoders publish is what the registry says each machine kind carries
    decoded = {
        IndoorBikeData: "bike",
        TreadmillData: "treadmill",
        CrossTrainerData: "cross_trainer",
        RowerData: "rower",
    }
    for record_type, kind_name in decoded.items():
        published = set(normalize.FTMS_MAP[record_type])
        allowed = {f.name for f in registry.fields_of(kind_name)}
        assert published <= allowed, (kind_name, published - allowed)


def test_simulated_devices_send_only_their_kinds_fields() -> None:
    assert set(fleet.MIX_ALL) == set(registry.KIND_NAMES)
    assert set(registry.MACHINE_KINDS) == fleet.MACHINES
    assert set(gymfleet.MACHINE_MIX) == set(registry.MACHINE_KINDS)
    assert set(fleet.VENDORS) == set(registry.KIND_NAMES)
    assert {k: v for k, v in rawdev.FE_EQUIPMENT.items()} == {
        k.name: k.ant_fe for k in registry.KINDS if k.ant_fe is not None
    }
    start = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    sent: dict[str, set[str]] = {}
    sim = fleet.Fleet.build("site-a", 2 * len(registry.KIND_NAMES), mix=fleet.MIX_ALL, seed=3)
    for step in range(120):
        for device, s in sim.tick(start + timedelta(seconds=step)):
            fields = {f for f in s.__struct_fields__ if f != "t" and getattr(s, f) is not None}
            sent.setdefault(device.kind, set()).update(fields)
    assert set(sent) == set(registry.KIND_NAMES)
    for kind_name, fields in sent.items():
        allowed = {f.name for f in registry.fields_of(kind_name)}
        assert fields <= allowed, (kind_name, fields - allowed)


def test_api_models_name_kinds_with_the_registry_type() -> None:
    for model in (models.Device, models.DeviceUtilisation):
        annotation = model.model_fields["kind"].annotation
        assert registry.DeviceKind in get_args(annotation), model
