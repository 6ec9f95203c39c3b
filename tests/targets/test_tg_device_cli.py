"""edgesmith build / flash / run (edgesmith.device), port auto-detection and vendor flash tools.

The vendor tools (esptool, stm32loader, pyOCD, dfu-util) are not installed here: their command
lines are checked as data, and ``flash_image`` is run against a stand-in executable on PATH that
records the arguments it got (a real subprocess, not a patched function).
"""
from __future__ import annotations

import argparse
import json
import stat
import types

import pytest
from tg_device_env import have_gcc, host_firmware, model_pair

from edgesmith import device
from edgesmith.errors import ConfigError
from targets.ports import (BOARD_TOOLS, board_of_image, detect_port, flash_image, vendor_command)
from targets.protocol import DeviceConnectionError, DeviceError
from targets.runner import HostFirmware


def _port(device_, vid=None, pid=None, description="n/a"):
    return types.SimpleNamespace(device=device_, vid=vid, pid=pid, description=description)


def test_tg_detect_port_rules():
    with pytest.raises(DeviceConnectionError, match="no serial port found.*socket://"):
        detect_port(lambda: [])
    assert detect_port(lambda: [_port("/dev/ttyS0"), _port("/dev/ttyUSB0", 0x10C4, 0xEA60)]) == "/dev/ttyUSB0"
    # several USB ports: the one with a known board bridge wins
    ports = [_port("/dev/ttyACM0", 0x1234, 1), _port("/dev/ttyACM1", 0x303A, 0x1001)]
    assert detect_port(lambda: ports) == "/dev/ttyACM1"
    ports = [_port("/dev/ttyUSB0", 0x0403, 1, "FT232R"), _port("/dev/ttyUSB1", 0x0403, 2, "FT2232")]
    with pytest.raises(DeviceConnectionError, match="several USB.*ttyUSB0 \\(FT232R\\).*ttyUSB1"):
        detect_port(lambda: ports)
    with pytest.raises(DeviceConnectionError, match="no USB serial port.*ttyS0"):
        detect_port(lambda: [_port("/dev/ttyS0")])


def test_tg_vendor_command_lines(tmp_path):
    app = tmp_path / "edgesmith-fw-esp32s3.bin"
    app.write_bytes(b"\0")
    assert vendor_command("esp32s3", app, "esptool", "esptool.py", port="/dev/ttyACM0", baud=460800) == [
        "esptool.py", "--chip", "esp32s3", "--port", "/dev/ttyACM0", "--baud", "460800", "write_flash",
        "0x10000", str(app)]
    # an ESP-IDF build folder: offsets from flasher_args.json
    (tmp_path / "flasher_args.json").write_text(json.dumps({"flash_files": {
        "0x0": "bootloader/bootloader.bin", "0x10000": app.name, "0x8000": "partition_table/pt.bin"}}))
    cmd = vendor_command("esp32s3", app, "esptool", "esptool", port="/dev/ttyACM0", baud=921600)
    assert cmd[cmd.index("write_flash") + 1:] == [
        "0x0", str(tmp_path / "bootloader/bootloader.bin"), "0x8000", str(tmp_path / "partition_table/pt.bin"),
        "0x10000", str(app)]
    img = tmp_path / "edgesmith-fw-stm32h747.bin"
    assert vendor_command("stm32h747", img, "stm32loader", "stm32loader", port="/dev/ttyUSB0", baud=115200) == [
        "stm32loader", "-p", "/dev/ttyUSB0", "-b", "115200", "-e", "-w", "-v", "-a", "0x8000000", str(img)]
    assert vendor_command("stm32h747", img, "pyocd", "pyocd", port=None, baud=0) == [
        "pyocd", "flash", "--target", "stm32h747xihx", "--base-address", "0x8000000", str(img)]
    assert vendor_command("stm32h747", img, "dfu-util", "dfu-util", port=None, baud=0) == [
        "dfu-util", "-a", "0", "-s", "0x8000000:leave", "-D", str(img)]
    gd = tmp_path / "edgesmith-fw-gd32vf103.bin"
    assert vendor_command("gd32vf103", gd, "dfu-util", "dfu-util", port=None, baud=0)[:3] == [
        "dfu-util", "-d", "28e9:0189"]
    assert board_of_image(gd) == "gd32vf103" and board_of_image(tmp_path / "other.bin") is None
    with pytest.raises(DeviceError, match="stm32loader talks to the STM32 UART bootloader"):
        vendor_command("stm32h747", img, "stm32loader", "stm32loader", port=None, baud=115200)


def test_tg_flash_image_tools(tmp_path, monkeypatch):
    img = tmp_path / "edgesmith-fw-gd32vf103.bin"
    img.write_bytes(b"\x13\x00\x00\x00")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(DeviceError, match="no flash tool for gd32vf103 is installed.*apt install dfu-util"):
        flash_image(img, log=lambda s: None)
    with pytest.raises(DeviceError, match="mps2-an500 images are not flashed.*QEMU"):
        flash_image(img, "mps2-an500", log=lambda s: None)
    # a stand-in dfu-util that records its arguments
    record = tmp_path / "args.txt"
    tool = bindir / "dfu-util"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > {record}\nexit 0\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    cmd = flash_image(img, log=lambda s: None)
    assert record.read_text().split() == cmd[1:]
    assert "0x8000000:leave" in cmd
    tool.write_text("#!/bin/sh\nexit 3\n")
    with pytest.raises(DeviceError, match="dfu-util failed with exit status 3"):
        flash_image(img, log=lambda s: None)
    assert set(BOARD_TOOLS) == {"esp32s3", "stm32h747", "gd32vf103"}


def _parser():
    p = argparse.ArgumentParser(prog="edgesmith")
    device.add_parsers(p.add_subparsers(dest="command"))
    return p


def test_tg_cli_argument_rules():
    p = _parser()
    with pytest.raises(SystemExit):
        p.parse_args(["flash", "--blob", "a", "--image", "b"])
    with pytest.raises(SystemExit):
        p.parse_args(["flash", "--port", "x"])
    args = p.parse_args(["flash", "--blob", "w.bin", "--port", "socket://127.0.0.1:1", "--baud", "921600"])
    assert (args.blob, args.baud, args.image) == ("w.bin", 921600, None)
    with pytest.raises(ConfigError, match="--require-signature needs --public-key"):
        device.flash("socket://127.0.0.1:1", blob=__file__, require_signature=True)
    with pytest.raises(ConfigError, match="exactly one"):
        device.flash("x")


@pytest.mark.skipif(not have_gcc(), reason="gcc is not installed: no host firmware")
def test_tg_cli_flash_blob_over_pty(tmp_path, capsys):
    p = model_pair()
    exe = host_firmware(p.export_dir)
    blob = tmp_path / "weights.bin"
    blob.write_bytes(p.new_blob)
    with HostFirmware(exe, tmp_path / "flash.bin") as fw:
        args = _parser().parse_args(["flash", "--port", fw.url, "--blob", str(blob)])
        assert device.COMMANDS["flash"](args) == 0
        assert "verified: slot A active and confirmed" in capsys.readouterr().out
        with fw.open() as dev:
            assert dev.infer(p.x.tobytes())[1] == p.expected(p.new)
