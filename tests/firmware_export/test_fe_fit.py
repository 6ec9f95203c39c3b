"""Fit report (firmware_export/fit.py): numbers and messages for models that fit and do not."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fe_blob_cases import make_graph

from edgesmith.errors import ExportError
from firmware_export.fit import fit_report

KiB = 1024

# make_graph(): 4504 int8 MACs, 576 binary ops, 32 element ops, 6 ops, 309 weight bytes:
# w1 108 + b1 16 + w2 36 + b2 16 + wb 36 (4x3x3 rows of 4 signs, 1 byte each) + bb 16 + k 1
# + wf 40 + bf 40
WEIGHT_BYTES = 309
WORK = 4504 + 576 + 32


def tiny_board(**changes) -> dict:
    board = {"name": "tiny-m7", "ram_regions": [{"name": "sram", "model_bytes": 128 * KiB}],
             "internal_flash_bytes": 64 * KiB, "external_flash_bytes": 1024 * KiB,
             "clock_hz": 100_000_000, "int8_cycles_per_mac": 2.0, "runtime_code_bytes": 40 * KiB}
    board.update(changes)
    return board


def test_model_that_fits():
    r = fit_report(make_graph(), tiny_board(), arena_bytes=100 * KiB)
    assert r.fits and r.ram_fits and r.flash_fits
    assert r.runtime_state_bytes == 512 + 32 * 6 and r.runtime_state_estimated
    assert r.ram_needed_bytes == 100 * KiB + 704 and r.arena_region == "sram"
    assert r.weight_bytes == WEIGHT_BYTES and r.weights_location == "internal flash"
    assert r.code_bytes == 40 * KiB and r.code_bytes_estimated
    assert r.flash_needed_bytes == 40 * KiB + WEIGHT_BYTES
    assert (r.macs, r.binary_ops, r.element_ops) == (4504, 576, 32)
    assert r.latency_estimate_s == pytest.approx(WORK * 2.0 / 100e6)
    assert r.messages[0] == ("RAM: arena 100 KiB + runtime state 704 B (estimate) fits in sram "
                             "(128 KiB for the model, 27.3 KiB left)")
    assert r.messages[1].startswith("flash: code 40 KiB (estimate) + weights 309 B")
    assert r.messages[2].startswith("latency 102.2 us (estimate:")
    assert "not a measurement" in r.latency_label
    again = json.loads(json.dumps(r.to_dict()))
    assert again["fits"] is True and again["messages"] == r.messages


def test_model_that_does_not_fit_ram_says_by_how_much():
    r = fit_report(make_graph(), tiny_board(), arena_bytes=182 * KiB, runtime_state_bytes=0)
    assert not r.fits and not r.ram_fits and r.flash_fits
    assert r.arena_region is None and r.ram_available_bytes == 128 * KiB
    assert r.messages[0].startswith("arena needs 182 KiB + runtime state 0 B, board tiny-m7 has "
                                    "128 KiB free (missing 54 KiB)")
    assert json.loads(r.to_json())["ram_fits"] is False


def test_arena_goes_to_the_first_region_large_enough():
    board = tiny_board(ram_regions=[{"name": "dtcm", "model_bytes": 16 * KiB},
                                    {"name": "none", "model_bytes": 0},
                                    {"name": "psram", "model_bytes": 4096 * KiB}])
    assert fit_report(make_graph(), board, arena_bytes=8 * KiB).arena_region == "dtcm"
    r = fit_report(make_graph(), board, arena_bytes=64 * KiB)
    assert r.arena_region == "psram" and r.ram_available_bytes == 4096 * KiB


def test_weights_move_to_external_flash_when_internal_is_full():
    r = fit_report(make_graph(), tiny_board(), arena_bytes=KiB, code_bytes=64 * KiB - 100)
    assert r.fits and r.weights_location == "external flash" and not r.code_bytes_estimated
    assert "go to external flash" in r.messages[1]


def test_flash_that_does_not_fit_anywhere():
    board = tiny_board(external_flash_bytes=0)
    r = fit_report(make_graph(), board, arena_bytes=KiB, code_bytes=64 * KiB - 100)
    assert not r.fits and r.ram_fits and r.weights_location is None
    assert r.messages[1].startswith(
        "flash needs 64.2 KiB (code 63.9 KiB + weights 309 B), board tiny-m7 has 64 KiB internal "
        "(missing 209 B)")
    r = fit_report(make_graph(), board, arena_bytes=KiB, code_bytes=70 * KiB)
    assert "(missing 6 KiB)" in r.messages[1]


def test_board_as_object_and_missing_field():
    r = fit_report(make_graph(), SimpleNamespace(**tiny_board(ram_regions=[
        SimpleNamespace(name="sram", model_bytes=128 * KiB)])), arena_bytes=100 * KiB)
    assert r.fits and r.arena_region == "sram"
    bad = tiny_board()
    del bad["clock_hz"]
    with pytest.raises(ExportError, match="has no field 'clock_hz'"):
        fit_report(make_graph(), bad, arena_bytes=KiB)
    with pytest.raises(ExportError, match=">= 0"):
        fit_report(make_graph(), tiny_board(), arena_bytes=-1)
