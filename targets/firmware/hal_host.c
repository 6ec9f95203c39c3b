/*
 * hal_host.c - native build of the firmware app for tests and development (POSIX).
 *
 * Link: --pty (prints "PTY <slave path>" as the first stdout line; --pty-link PATH also makes
 * a symlink that stays the same across restarts), --stdio, or --tcp PORT (one client at a
 * time, like QEMU's -serial tcp:...,server; pyserial "socket://127.0.0.1:PORT").
 *
 * Flash: --flash FILE, memory-mapped (MAP_SHARED) so every program/erase is in the file at once
 * and survives a killed process; created 0xFF-filled when missing. NOR semantics: erase sets
 * 0xFF, program ANDs bits in. --slot-size N picks the size of each slot (file = 2 sectors for
 * the boot records + 2 slots). Without --flash an anonymous mapping is used.
 *
 * Link I/O: reads take up to 4 KiB per system call. Answers are held in a buffer only while
 * received bytes are still waiting to be processed, and go out in one write before the app
 * waits for input, before a flash erase, a reset or a power cut: pipelined WRITEs on a pty then
 * cost one write (and one wake-up of the host) per burst instead of one per frame. The pty and
 * TCP descriptors (ours alone) are non-blocking and read before poll() is asked: a streaming
 * host keeps bytes waiting, so each 4 KiB costs one system call instead of two. stdin is
 * shared with the parent and stays blocking (poll, then read).
 *
 * Power cut: --power-cut-at N makes the N-th flash operation (erase or program, 1-based,
 * counted from process start) tear (only its first half is applied) and the process then exits
 * with status 75 (--power-cut-action exit, the default) or restarts the app in-process
 * (--power-cut-action reset). REBOOT always restarts in-process: same pty, same flash file.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "es_app.h"
#include "es_hal.h"

#define SECTOR_SIZE 4096u
#define DEFAULT_SLOT_SIZE (512u * 1024u)
#define POWER_CUT_EXIT 75

static struct {
    int rx_fd, tx_fd;     /* current link */
    int listen_fd;        /* --tcp */
    int pty_slave_fd;     /* kept open so the master never sees EIO between host opens */
    int rx_nonblock;      /* rx_fd is O_NONBLOCK: read first, poll only when it is empty */
    uint8_t *flash;
    uint32_t flash_size;
    uint32_t ops;
    uint32_t cut_at;      /* 0 = never */
    int cut_resets;       /* --power-cut-action reset */
    int verbose;
    uint8_t rx_buf[4096]; /* bytes read from the link but not consumed yet */
    uint32_t rx_len, rx_pos;
    uint8_t tx_buf[8192]; /* answers held while more received bytes wait (see tx_flush) */
    uint32_t tx_len;
    struct timespec t0;
    jmp_buf reset;
} H;

static void die(const char *what)
{
    fprintf(stderr, "edgesmith-fw-host: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: edgesmith-fw-host (--pty [--pty-link PATH] | --stdio | --tcp PORT)\n"
            "       [--flash FILE] [--slot-size BYTES] [--power-cut-at N]\n"
            "       [--power-cut-action exit|reset] [--verbose]\n");
    exit(2);
}

/* ------------------------------------------------------------------ time */

uint32_t hal_millis(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint32_t)((t.tv_sec - H.t0.tv_sec) * 1000 + (t.tv_nsec - H.t0.tv_nsec) / 1000000);
}

uint32_t hal_cycles(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint32_t)((uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec);
}

const char *hal_board_name(void)
{
    return "host";
}

/* ------------------------------------------------------------------ link */

/* Make fd (ours alone: the pty master, an accepted socket) non-blocking for reads. Writes
 * still go out whole: write_all() goes round again on EAGAIN. */
static void set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        die("fcntl O_NONBLOCK");
    }
    H.rx_nonblock = 1;
}

static void tcp_accept(void)
{
    int one = 1;
    int fd = accept(H.listen_fd, NULL, NULL);
    if (fd < 0) {
        die("accept");
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    H.rx_fd = H.tx_fd = fd;
    set_nonblocking(fd);
}

static void write_all(const uint8_t *data, uint32_t len)
{
    while (len > 0 && H.tx_fd >= 0) {
        ssize_t n = write(H.tx_fd, data, len);
        if (n < 0) {
            if (errno == EAGAIN) { /* non-blocking descriptor, host not reading: wait for room */
                struct pollfd p;
                p.fd = H.tx_fd;
                p.events = POLLOUT;
                p.revents = 0;
                (void)poll(&p, 1, 100);
                continue;
            }
            if (errno == EINTR) {
                continue;
            }
            return; /* the reader went away; the host will retry */
        }
        data += n;
        len -= (uint32_t)n;
    }
}

/* Send the held answers (see the file comment for when). */
static void tx_flush(void)
{
    write_all(H.tx_buf, H.tx_len);
    H.tx_len = 0;
}

static void link_lost(void)
{
    H.tx_len = 0; /* answers for a client that is gone */
    if (H.listen_fd >= 0) { /* TCP: wait for the next client, like a UART that stays */
        close(H.rx_fd);
        H.rx_fd = H.tx_fd = -1;
        H.rx_len = H.rx_pos = 0;
        tcp_accept();
        return;
    }
    if (H.pty_slave_fd >= 0) {
        return; /* cannot happen while we hold the slave open; keep serving */
    }
    exit(0); /* stdio closed: the host is gone */
}

int hal_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    struct pollfd p;
    ssize_t n = -1;
    if (H.rx_pos < H.rx_len) {
        *byte = H.rx_buf[H.rx_pos++];
        return 1;
    }
    tx_flush(); /* nothing left to process: the host gets its answers before we wait */
    if (H.rx_fd < 0) {
        tcp_accept();
    }
    if (H.rx_nonblock) {
        n = read(H.rx_fd, H.rx_buf, sizeof(H.rx_buf)); /* bytes already waiting: no poll() */
        if (n < 0 && errno == EAGAIN && timeout_ms == 0u) {
            return 0;
        }
    }
    if (n < 0) {
        p.fd = H.rx_fd;
        p.events = POLLIN;
        p.revents = 0;
        if (poll(&p, 1, (int)timeout_ms) <= 0) {
            return 0;
        }
        n = read(H.rx_fd, H.rx_buf, sizeof(H.rx_buf));
    }
    if (n > 0) {
        H.rx_len = (uint32_t)n;
        H.rx_pos = 1;
        *byte = H.rx_buf[0];
        return 1;
    }
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        link_lost();
    }
    return 0;
}

/* Copies what the receive buffer holds instead of one call per byte (a 1 KiB WRITE payload). */
uint32_t hal_uart_read_bytes(uint8_t *buf, uint32_t len, uint32_t timeout_ms)
{
    uint32_t got = 0;
    while (got < len) {
        uint32_t n = H.rx_len - H.rx_pos;
        if (n == 0u) {
            if (!hal_uart_read(&buf[got], timeout_ms)) { /* waits, then refills the buffer */
                break;
            }
            ++got;
            continue;
        }
        if (n > len - got) {
            n = len - got;
        }
        memcpy(buf + got, H.rx_buf + H.rx_pos, n);
        H.rx_pos += n;
        got += n;
    }
    return got;
}

uint32_t hal_uart_skip_to(uint8_t value)
{
    const uint8_t *start = H.rx_buf + H.rx_pos;
    const uint8_t *hit = memchr(start, value, H.rx_len - H.rx_pos);
    uint32_t n = hit != NULL ? (uint32_t)(hit - start) : H.rx_len - H.rx_pos;
    H.rx_pos += n;
    return n;
}

void hal_uart_write(const uint8_t *data, uint32_t len)
{
    if (len > sizeof(H.tx_buf) - H.tx_len) {
        tx_flush();
    }
    if (len > sizeof(H.tx_buf)) {
        write_all(data, len);
        return;
    }
    memcpy(H.tx_buf + H.tx_len, data, len);
    H.tx_len += len;
}

static void open_pty(const char *link_path)
{
    struct termios t;
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    const char *name;
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
        die("posix_openpt");
    }
    name = ptsname(master);
    H.pty_slave_fd = open(name, O_RDWR | O_NOCTTY);
    if (H.pty_slave_fd < 0) {
        die("open pty slave");
    }
    /* raw: no echo (we would read our own responses), no CR/LF mapping, 8 bits */
    tcgetattr(H.pty_slave_fd, &t);
    cfmakeraw(&t);
    tcsetattr(H.pty_slave_fd, TCSANOW, &t);
    tcgetattr(master, &t);
    cfmakeraw(&t);
    tcsetattr(master, TCSANOW, &t);
    if (link_path != NULL) {
        unlink(link_path);
        if (symlink(name, link_path) != 0) {
            die("symlink --pty-link");
        }
    }
    printf("PTY %s\n", name);
    fflush(stdout);
    H.rx_fd = H.tx_fd = master;
    set_nonblocking(master);
}

static void open_tcp(int port)
{
    struct sockaddr_in a;
    int one = 1;
    H.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (H.listen_fd < 0) {
        die("socket");
    }
    setsockopt(H.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(H.listen_fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(H.listen_fd, 1) != 0) {
        die("bind/listen --tcp");
    }
    printf("TCP 127.0.0.1:%d\n", port);
    fflush(stdout);
}

/* ------------------------------------------------------------------ flash */

const uint8_t *hal_flash_base(void)
{
    return H.flash;
}

uint32_t hal_flash_size(void)
{
    return H.flash_size;
}

uint32_t hal_flash_sector_size(void)
{
    return SECTOR_SIZE;
}

uint32_t hal_flash_program_unit(void)
{
    return 1;
}

uint32_t hal_flash_op_count(void)
{
    return H.ops;
}

/* Count one operation; 1 when power is cut during it. */
static int power_fails_now(void)
{
    H.ops++;
    return H.cut_at != 0u && H.ops == H.cut_at;
}

static void power_cut(const char *what, uint32_t offset, uint32_t len)
{
    fprintf(stderr, "edgesmith-fw-host: POWER CUT during flash op %u (%s offset %u length %u)\n",
            H.ops, what, offset, len);
    msync(H.flash, H.flash_size, MS_SYNC);
    tx_flush(); /* answers to earlier commands were on the wire before the cut */
    if (H.cut_resets) {
        H.cut_at = 0;
        longjmp(H.reset, 1);
    }
    _exit(POWER_CUT_EXIT);
}

int hal_flash_erase(uint32_t offset, uint32_t len)
{
    int cut;
    if (offset % SECTOR_SIZE != 0u || len % SECTOR_SIZE != 0u || offset > H.flash_size ||
        len > H.flash_size - offset) {
        return -1;
    }
    tx_flush(); /* an erase takes long on real flash: do not hold answers behind it */
    cut = power_fails_now();
    if (H.verbose) {
        fprintf(stderr, "flash op %u: erase %u +%u\n", H.ops, offset, len);
    }
    memset(H.flash + offset, 0xFF, cut ? len / 2u : len);
    if (cut) {
        power_cut("erase", offset, len);
    }
    return 0;
}

/* NOR programming only clears bits: dst &= src, eight bytes at a time (the byte loop through
 * H.flash, reloaded each byte for aliasing, cost more than the pty read of the same bytes). */
static void nor_program(uint8_t *dst, const uint8_t *src, uint32_t n)
{
    uint32_t i = 0;
    for (; n - i >= 8u; i += 8u) {
        uint64_t have, add;
        memcpy(&have, dst + i, 8);
        memcpy(&add, src + i, 8);
        have &= add;
        memcpy(dst + i, &have, 8);
    }
    for (; i < n; ++i) {
        dst[i] &= src[i];
    }
}

int hal_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    int cut;
    if (offset > H.flash_size || len > H.flash_size - offset) {
        return -1;
    }
    cut = power_fails_now();
    if (H.verbose) {
        fprintf(stderr, "flash op %u: program %u +%u\n", H.ops, offset, len);
    }
    nor_program(H.flash + offset, data, cut ? len / 2u : len);
    if (cut) {
        power_cut("program", offset, len);
    }
    return 0;
}

static void open_flash(const char *path, uint32_t slot_size)
{
    int fd;
    struct stat st;
    H.flash_size = 2u * SECTOR_SIZE + 2u * slot_size;
    if (path == NULL) {
        H.flash = mmap(NULL, H.flash_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (H.flash == MAP_FAILED) {
            die("mmap");
        }
        memset(H.flash, 0xFF, H.flash_size);
        return;
    }
    fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0 || fstat(fd, &st) != 0) {
        die(path);
    }
    if (st.st_size == 0) {
        static uint8_t blank[SECTOR_SIZE];
        uint32_t off;
        memset(blank, 0xFF, sizeof(blank));
        for (off = 0; off < H.flash_size; off += SECTOR_SIZE) {
            if (write(fd, blank, SECTOR_SIZE) != (ssize_t)SECTOR_SIZE) {
                die("write flash file");
            }
        }
    } else if ((uint64_t)st.st_size != H.flash_size) {
        fprintf(stderr, "edgesmith-fw-host: flash file %s is %lld bytes, expected %u "
                        "(2 x %u record sectors + 2 x --slot-size %u); use the same --slot-size "
                        "or a new file\n", path, (long long)st.st_size, H.flash_size, SECTOR_SIZE,
                slot_size);
        exit(2);
    }
    H.flash = mmap(NULL, H.flash_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (H.flash == MAP_FAILED) {
        die("mmap flash file");
    }
    close(fd);
}

/* ------------------------------------------------------------------ reset + main */

void hal_init(void)
{
    clock_gettime(CLOCK_MONOTONIC, &H.t0);
}

void hal_reset(void)
{
    tx_flush(); /* the REBOOT answer goes out before the restart */
    longjmp(H.reset, 1);
}

static unsigned long parse_number(const char *flag, const char *text)
{
    char *end;
    unsigned long v = strtoul(text, &end, 0);
    if (*text == '\0' || *end != '\0') {
        fprintf(stderr, "edgesmith-fw-host: %s expects a number, got '%s'\n", flag, text);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    const char *flash_path = NULL, *pty_link = NULL;
    unsigned long slot_size = DEFAULT_SLOT_SIZE;
    int mode = 0, tcp_port = 0, i;
    memset(&H, 0, sizeof(H));
    H.rx_fd = H.tx_fd = H.listen_fd = H.pty_slave_fd = -1;
    for (i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--pty") == 0) {
            mode = 'p';
        } else if (strcmp(a, "--stdio") == 0) {
            mode = 's';
        } else if (strcmp(a, "--verbose") == 0) {
            H.verbose = 1;
        } else if (v == NULL) {
            usage();
        } else if (strcmp(a, "--tcp") == 0) {
            mode = 't';
            tcp_port = (int)parse_number(a, v);
            ++i;
        } else if (strcmp(a, "--pty-link") == 0) {
            pty_link = v;
            ++i;
        } else if (strcmp(a, "--flash") == 0) {
            flash_path = v;
            ++i;
        } else if (strcmp(a, "--slot-size") == 0) {
            slot_size = parse_number(a, v);
            ++i;
        } else if (strcmp(a, "--power-cut-at") == 0) {
            H.cut_at = (uint32_t)parse_number(a, v);
            ++i;
        } else if (strcmp(a, "--power-cut-action") == 0) {
            if (strcmp(v, "exit") != 0 && strcmp(v, "reset") != 0) {
                usage();
            }
            H.cut_resets = strcmp(v, "reset") == 0;
            ++i;
        } else {
            usage();
        }
    }
    if (mode == 0 || slot_size < SECTOR_SIZE || slot_size % SECTOR_SIZE != 0u ||
        slot_size > 256ul * 1024u * 1024u) {
        if (mode != 0) {
            fprintf(stderr, "edgesmith-fw-host: --slot-size must be a multiple of %u (max 256 MiB)\n",
                    SECTOR_SIZE);
        }
        usage();
    }
    signal(SIGPIPE, SIG_IGN);
    open_flash(flash_path, (uint32_t)slot_size);
    if (mode == 'p') {
        open_pty(pty_link);
    } else if (mode == 't') {
        open_tcp(tcp_port);
    } else {
        H.rx_fd = 0;
        H.tx_fd = 1;
    }
    hal_init();
    setjmp(H.reset); /* REBOOT and --power-cut-action reset come back here */
    es_app_run();
    return 0;
}
