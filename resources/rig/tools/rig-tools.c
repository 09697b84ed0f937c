/*
 * rig-tools: small helpers for the nested rig's L1 hosts, where only busybox is at hand.
 *   rig-tools mktap NAME
 *       creates a persistent tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as vmm opens it), so it
 *       can be put in a bridge before a VMM attaches to it.
 *   rig-tools probe HOST PORT SECONDS
 *       holds one TCP connection to HOST:PORT (an echo server) for SECONDS or until SIGTERM,
 *       sending a sequence number every 100 ms and checking each echo; prints
 *       "PROBE: sent=N echoed=M longest_stall_ms=S open=yes|no" and exits 0 only if the
 *       connection stayed open and every echo came back in order.
 *   rig-tools listen PORT
 *       waits for one TCP message on PORT and prints it: how the two L1 hosts of a migration
 *       scenario tell each other that a step is done.
 *   rig-tools send HOST PORT TEXT
 *       sends TEXT to a listener, retrying the connection for up to 10 minutes.
 *   rig-tools hmp SOCKET COMMAND
 *       runs one QEMU human-monitor command over the monitor's unix socket and prints its
 *       answer (for QEMU's side of the migration benchmark).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int mktap(const char *name)
{
    int fd = open("/dev/net/tun", O_RDWR);
    struct ifreq ifr = { 0 };
    if (fd < 0) {
        perror("mktap: /dev/net/tun");
        return 1;
    }
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &ifr) || ioctl(fd, TUNSETPERSIST, 1)) {
        perror("mktap: TUNSETIFF/TUNSETPERSIST");
        return 1;
    }
    return 0;
}

struct echoes {
    char buf[8 * 64];
    size_t have;
    uint64_t echoed;
    int in_order;
};

/* Reads what the echo server sent back; returns 0 when the connection is gone. */
static int take_echoes(int s, struct echoes *e)
{
    ssize_t n = read(s, e->buf + e->have, sizeof e->buf - e->have);
    if (n <= 0)
        return 0;
    e->have += n;
    while (e->have >= 8) {
        uint64_t v;
        memcpy(&v, e->buf, 8);
        if (v != e->echoed + 1)
            e->in_order = 0;
        e->echoed = v;
        memmove(e->buf, e->buf + 8, e->have - 8);
        e->have -= 8;
    }
    return 1;
}

/* Connects to HOST:PORT, retrying every 200 ms for `tries` attempts; -1 if it never answers. */
static int connect_retrying(const char *host, int port, int tries)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "rig-tools: bad address %s\n", host);
        return -1;
    }
    for (int i = 0; i < tries; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0)
            return s;
        close(s);
        usleep(200000);
    }
    return -1;
}

static int listen_once(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) {
        perror("listen");
        return 1;
    }
    int c = accept(s, NULL, NULL);
    char buf[512];
    ssize_t n, got = 0;
    while (c >= 0 && got < (ssize_t)sizeof buf - 1 && (n = read(c, buf + got, sizeof buf - 1 - got)) > 0)
        got += n;
    buf[got] = 0;
    printf("%s\n", buf);
    return c >= 0 ? 0 : 1;
}

static int send_once(const char *host, int port, const char *text)
{
    int s = connect_retrying(host, port, 3000);
    if (s < 0 || write(s, text, strlen(text)) != (ssize_t)strlen(text)) {
        fprintf(stderr, "send: %s:%d does not answer\n", host, port);
        return 1;
    }
    close(s);
    return 0;
}

/* Reads from the monitor until its "(qemu) " prompt; prints what came before when `show`. */
static int read_to_prompt(int s, int show)
{
    char buf[65536];
    size_t got = 0;
    for (;;) {
        struct pollfd p = { s, POLLIN, 0 };
        if (poll(&p, 1, 30000) <= 0)
            return 1;
        ssize_t n = read(s, buf + got, sizeof buf - 1 - got);
        if (n <= 0)
            return 1;
        got += n;
        buf[got] = 0;
        char *prompt = strstr(buf, "(qemu) ");
        if (prompt) {
            *prompt = 0;
            if (show)
                fputs(buf, stdout);
            return 0;
        }
        if (got == sizeof buf - 1)
            got = 0;
    }
}

static int hmp(const char *path, const char *command)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) {
        perror("hmp: connect");
        return 1;
    }
    if (read_to_prompt(s, 0))
        return 1;
    dprintf(s, "%s\n", command);
    /* The monitor echoes the command line first; the answer follows it. */
    return read_to_prompt(s, 1);
}

static int probe(const char *host, int port, int seconds)
{
    int s = connect_retrying(host, port, 1500), one = 1;
    if (s < 0) {
        printf("PROBE: cannot connect to %s:%d\n", host, port);
        return 1;
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    printf("PROBE: connected to %s:%d\n", host, port);
    fflush(stdout);
    uint64_t end = now_ms() + (uint64_t)seconds * 1000, last_echo = now_ms(), next_send = now_ms();
    uint64_t sent = 0, stall = 0;
    struct echoes e = { .in_order = 1 };
    int open_ = 1;
    signal(SIGTERM, on_term);
    while (now_ms() < end && open_ && !stop) {
        if (now_ms() >= next_send) {
            uint64_t v = sent + 1;
            if (write(s, &v, sizeof v) != sizeof v) {
                open_ = 0;
                break;
            }
            sent = v;
            next_send += 100;
        }
        struct pollfd p = { s, POLLIN, 0 };
        int t = (int)(next_send > now_ms() ? next_send - now_ms() : 0);
        if (poll(&p, 1, t) > 0) {
            uint64_t before = e.echoed;
            open_ = take_echoes(s, &e);
            if (e.echoed != before)
                last_echo = now_ms();
        }
        if (now_ms() - last_echo > stall)
            stall = now_ms() - last_echo;
    }
    /* Let the last echoes come back. */
    for (int i = 0; open_ && e.echoed < sent && i < 50; i++) {
        struct pollfd p = { s, POLLIN, 0 };
        if (poll(&p, 1, 100) > 0)
            open_ = take_echoes(s, &e);
    }
    printf("PROBE: sent=%llu echoed=%llu longest_stall_ms=%llu open=%s in_order=%s\n", (unsigned long long)sent,
           (unsigned long long)e.echoed, (unsigned long long)stall, open_ ? "yes" : "no", e.in_order ? "yes" : "no");
    return open_ && e.in_order && e.echoed == sent ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "mktap"))
        return mktap(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "probe"))
        return probe(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "hmp"))
        return hmp(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "listen"))
        return listen_once(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "send"))
        return send_once(argv[2], atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: rig-tools mktap NAME | probe HOST PORT SECONDS | listen PORT | send HOST PORT TEXT | hmp SOCKET COMMAND\n");
    return 2;
}
