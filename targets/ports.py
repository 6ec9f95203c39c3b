"""Serial port auto-detection and the vendor flash tools for whole firmware images.

* :func:`detect_port` picks the one USB serial port present (``serial.tools.list_ports``), or
  raises an error listing every port found so the user can pass ``--port``.
* :func:`vendor_command` builds the vendor tool's command line for a firmware image with the
  board's flash offsets (esptool for ESP32-S3; stm32loader, pyOCD or dfu-util for STM32H747;
  dfu-util for GD32VF103); :func:`flash_image` runs it, and says clearly when no tool is
  installed. Weight blobs do not go through these tools: they use the EdgeSmith protocol
  (``targets.flasher``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from targets.protocol import DeviceConnectionError, DeviceError

#: USB vendor ids of the serial bridges boards ship with (preferred when several ports exist)
KNOWN_USB_VIDS = {0x303A: "Espressif USB", 0x10C4: "Silicon Labs CP210x", 0x1A86: "WCH CH340",
                  0x0403: "FTDI", 0x0483: "STMicroelectronics ST-LINK VCP", 0x28E9: "GigaDevice"}

#: where images go (ESP-IDF's default partition table puts the factory app at 0x10000)
ESP32S3_APP_OFFSET = 0x10000
STM32_FLASH_BASE = 0x0800_0000
STM32_QSPI_BASE = 0x9000_0000
GD32VF103_FLASH_BASE = 0x0800_0000
GD32VF103_DFU_ID = "28e9:0189"
PYOCD_TARGET_STM32H747 = "stm32h747xihx"

#: tools per board, in order of preference; the first one installed is used
BOARD_TOOLS = {"esp32s3": ("esptool",), "stm32h747": ("stm32loader", "pyocd", "dfu-util"),
               "gd32vf103": ("dfu-util",)}
#: executable names per tool (esptool installs esptool.py before v5, esptool from v5)
TOOL_EXECUTABLES = {"esptool": ("esptool", "esptool.py"), "stm32loader": ("stm32loader",),
                    "pyocd": ("pyocd",), "dfu-util": ("dfu-util",)}
INSTALL_HINTS = {"esptool": "pip install esptool", "stm32loader": "pip install stm32loader",
                 "pyocd": "pip install pyocd", "dfu-util": "apt install dfu-util (or your OS's package)"}


def _describe(port) -> str:
    vid = f" [{port.vid:04x}:{port.pid:04x}]" if port.vid is not None else ""
    return f"{port.device} ({port.description or 'no description'}){vid}"


def detect_port(comports: Callable[[], Sequence] | None = None) -> str:
    """The serial port of the one connected board; an error listing all ports otherwise."""
    if comports is None:
        from serial.tools.list_ports import comports  # noqa: PLC0415
    ports = list(comports())
    if not ports:
        raise DeviceConnectionError("no serial port found: connect the board (and check its USB "
                                    "cable carries data), or pass --port URL: a device path, a pty of "
                                    "the host firmware, or socket://127.0.0.1:PORT for QEMU")
    usb = [p for p in ports if p.vid is not None]
    known = [p for p in usb if p.vid in KNOWN_USB_VIDS]
    for group in (known, usb):
        if len(group) == 1:
            return group[0].device
    listing = "; ".join(_describe(p) for p in ports)
    why = "several USB serial ports" if len(usb) > 1 else "no USB serial port"
    raise DeviceConnectionError(f"cannot pick a port automatically ({why}); found: {listing}. "
                                f"Pass --port with one of them")


def board_of_image(image: str | Path) -> str | None:
    """The board a ``targets.build`` image was built for, from its name ``edgesmith-fw-BOARD.*``."""
    m = re.fullmatch(r"edgesmith-fw-(.+)\.(bin|elf|hex)", Path(image).name)
    return m.group(1) if m else None


def find_tool(tool: str) -> str | None:
    """Path of an installed vendor tool, or None."""
    for exe in TOOL_EXECUTABLES[tool]:
        path = shutil.which(exe)
        if path:
            return path
    return None


def _esp_flash_files(image: Path) -> list[tuple[int, Path]]:
    """(offset, file) pairs: ESP-IDF's flasher_args.json next to the image when present."""
    args = image.parent / "flasher_args.json"
    if args.is_file():
        files = json.loads(args.read_text()).get("flash_files", {})
        return sorted((int(off, 0), image.parent / name) for off, name in files.items())
    return [(ESP32S3_APP_OFFSET, image)]


def vendor_command(board: str, image: str | Path, tool: str, exe: str, *, port: str | None,
                   baud: int) -> list[str]:
    """The command line that writes ``image`` to ``board`` with ``tool`` (at executable ``exe``)."""
    image = Path(image)
    if board == "esp32s3" and tool == "esptool":
        cmd = [exe, "--chip", "esp32s3"]
        if port:
            cmd += ["--port", port]
        cmd += ["--baud", str(baud), "write_flash"]
        for off, path in _esp_flash_files(image):
            cmd += [hex(off), str(path)]
        return cmd
    if board == "stm32h747" and tool == "stm32loader":
        if not port:
            raise DeviceError("stm32loader talks to the STM32 UART bootloader: pass --port (BOOT0 high)")
        return [exe, "-p", port, "-b", str(baud), "-e", "-w", "-v", "-a", hex(STM32_FLASH_BASE), str(image)]
    if board == "stm32h747" and tool == "pyocd":
        cmd = [exe, "flash", "--target", PYOCD_TARGET_STM32H747]
        if image.suffix == ".bin":
            cmd += ["--base-address", hex(STM32_FLASH_BASE)]
        return cmd + [str(image)]
    if board == "stm32h747" and tool == "dfu-util":
        return [exe, "-a", "0", "-s", f"{hex(STM32_FLASH_BASE)}:leave", "-D", str(image)]
    if board == "gd32vf103" and tool == "dfu-util":
        return [exe, "-d", GD32VF103_DFU_ID, "-a", "0", "-s", f"{hex(GD32VF103_FLASH_BASE)}:leave",
                "-D", str(image)]
    raise DeviceError(f"no way to flash {board} with {tool}; for {board} use: "
                      f"{', '.join(BOARD_TOOLS.get(board, ())) or 'none'}")


def flash_image(image: str | Path, board: str | None = None, *, port: str | None = None,
                baud: int = 115200, tool: str | None = None, log: Callable[[str], None] = print,
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Write a whole firmware image with the board's vendor tool; returns the command run."""
    image = Path(image)
    if not image.is_file():
        raise DeviceError(f"no firmware image at {image}; build one with edgesmith build RUN_DIR --target BOARD")
    board = board or board_of_image(image)
    if board is None:
        raise DeviceError(f"cannot tell the board of {image.name}; pass --target BOARD")
    if board not in BOARD_TOOLS:
        hint = {"mps2-an500": "it has no flash: edgesmith run boots it in QEMU",
                "host": "run the executable itself"}.get(board, "it is not a microcontroller board")
        raise DeviceError(f"{board} images are not flashed with a vendor tool: {hint}")
    candidates = (tool,) if tool else BOARD_TOOLS[board]
    for name in candidates:
        if name not in TOOL_EXECUTABLES:
            raise DeviceError(f"unknown flash tool {name!r}; choose from {', '.join(BOARD_TOOLS[board])}")
        exe = find_tool(name)
        if exe:
            break
    else:
        hints = "; ".join(f"{n}: {INSTALL_HINTS[n]}" for n in candidates)
        raise DeviceError(f"no flash tool for {board} is installed (tried {', '.join(candidates)}). "
                          f"Install one: {hints}")
    if board == "esp32s3" and not port:
        port = detect_port()
    cmd = vendor_command(board, image, name, exe, port=port, baud=baud)
    if board == "stm32h747" and (image.parent / "extflash.bin").is_file():
        log(f"note: {image.parent / 'extflash.bin'} holds the weights for QSPI flash at "
            f"{hex(STM32_QSPI_BASE)}; these tools cannot program QSPI: use STM32CubeProgrammer with "
            f"the board's external loader")
    log("running: " + " ".join(cmd))
    proc = run(cmd)
    if proc.returncode != 0:
        raise DeviceError(f"{name} failed with exit status {proc.returncode}: {' '.join(cmd)}")
    return cmd
