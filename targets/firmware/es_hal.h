/*
 * es_hal.h - the board interface of the EdgeSmith firmware app (C99, no libc).
 *
 * One implementation per board: hal_host.c (native build: pty/stdio/TCP + a flash file with
 * power-cut injection), hal_mps2.c (QEMU mps2-an500), hal_stm32h747.c, hal_gd32vf103.c and the
 * ESP-IDF component. The app (es_app.c) only calls these functions.
 *
 * Flash is a storage area of hal_flash_size() bytes, readable in place (memory-mapped) at
 * hal_flash_base(), erased in hal_flash_sector_size() sectors to 0xFF, programmed like NOR
 * flash (a program can only clear bits). Offsets are relative to the storage area.
 */
#ifndef ES_HAL_H
#define ES_HAL_H

#include <stddef.h>
#include <stdint.h>

/* Bring up clocks, the UART, the cycle counter and the flash driver. */
void hal_init(void);

/* Wait up to timeout_ms for one received byte: 1 and *byte set, or 0 on timeout. */
int hal_uart_read(uint8_t *byte, uint32_t timeout_ms);

/* Read len bytes into buf, each within timeout_ms of the one before (the first within
 * timeout_ms of the call); returns how many came (less than len after such a gap). Optional: a
 * board without its own gets es_proto.c's default, hal_uart_read byte by byte (a weak symbol). */
uint32_t hal_uart_read_bytes(uint8_t *buf, uint32_t len, uint32_t timeout_ms);

/* Drop received bytes already buffered, up to (not including) the next `value`; returns how
 * many were dropped. Never waits. Optional: the default (es_proto.c, weak) drops none and the
 * frame scanner reads line noise byte by byte. */
uint32_t hal_uart_skip_to(uint8_t value);

/* Send bytes (blocking until queued to the wire). */
void hal_uart_write(const uint8_t *data, uint32_t len);

/* Milliseconds since boot (wraps). */
uint32_t hal_millis(void);

/* Free-running counter used for INFER timing (see protocol.md: board-specific unit). */
uint32_t hal_cycles(void);

/* The board name reported by INFO (at most 15 characters). */
const char *hal_board_name(void);

const uint8_t *hal_flash_base(void);
uint32_t hal_flash_size(void);
uint32_t hal_flash_sector_size(void);
/* Smallest program unit in bytes (1 for byte-programmable flash); see hal_flash_write. */
uint32_t hal_flash_program_unit(void);

/* Erase [offset, offset + len): both sector aligned. 0 on success. */
int hal_flash_erase(uint32_t offset, uint32_t len);

/* Program len bytes at offset (the area must be erased). Boards with program units > 1 pad a
 * trailing partial unit with 0xFF. 0 on success. */
int hal_flash_write(uint32_t offset, const uint8_t *data, uint32_t len);

/* Flash erase + program operations since power-on (STATS "flash writes"). */
uint32_t hal_flash_op_count(void);

/* Restart the firmware (REBOOT, after the response went out). Does not return. */
void hal_reset(void);

#endif /* ES_HAL_H */
