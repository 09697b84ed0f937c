/*
 * continuity: the guest side of the Linux-guest migration checks (and of the migration
 * benchmark's guest heartbeat). Runs until killed, in four threads:
 *   memory  rewrites a working set page by page with page-unique contents (page number and
 *           pass number), checking each page still holds what it last wrote;
 *   records appends numbered fixed-size records to a file and fsyncs after each one: a record
 *           counts as acknowledged once its fsync returned;
 *   echo    a TCP echo server, for a connection held open across a migration;
 *   kmsg    copies every kernel message about clocks (clocksource, TSC, "time") from
 *           /dev/kmsg as "CONT: KMSG <message>", whatever the console's log level, so a
 *           clocksource the guest marks unstable after a migration shows;
 *   main    a heartbeat line every 250 ms on stdout:
 *           "CONT: hb=N mono_ms=M real_ms=R pass=P rec=A maxgap_ms=G corrupt=C"
 *           where rec is the last acknowledged record and maxgap the longest time between two
 *           heartbeats (the pause the guest saw).
 * Usage: continuity [-m WORKING_SET_MiB] [-i PASS_INTERVAL_ms] [-r RECORD_FILE] [-p PORT]
 * A record file "-" or a port 0 turns that part off.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#define PAGE 4096
#define RECORD_LEN 16

static volatile uint64_t passes, corrupt, acked;
static size_t ws_pages = 4096;
static unsigned pass_interval_ms = 200;
static const char *record_file = "/mnt/records";
static int port = 7000;

static uint64_t now_ms(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* The word stored at slot s of page p in pass n: unique per page, pass and slot. */
static uint64_t tag(uint64_t p, uint64_t n, uint64_t s)
{
    return (n << 40) ^ (p << 8) ^ s ^ 0x5a5a000000000000ull;
}

static void *memory(void *unused)
{
    (void)unused;
    uint64_t *ws = mmap(NULL, ws_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (ws == MAP_FAILED) {
        printf("CONT: cannot map the working set: %s\n", strerror(errno));
        fflush(stdout);
        exit(1);
    }
    const size_t words = PAGE / sizeof(uint64_t), slots = 8;
    for (uint64_t n = 1;; n++) {
        for (size_t p = 0; p < ws_pages; p++) {
            uint64_t *page = ws + p * words;
            for (size_t s = 0; s < slots; s++) {
                uint64_t *w = page + s * (words / slots);
                uint64_t want = n == 1 ? 0 : tag(p, n - 1, s);
                if (*w != want) {
                    if (corrupt++ < 5)
                        printf("CONT: CORRUPT page %zu slot %zu pass %llu: %#llx, expected %#llx\n", p, s,
                               (unsigned long long)n, (unsigned long long)*w, (unsigned long long)want);
                }
                *w = tag(p, n, s);
            }
        }
        passes = n;
        sleep_ms(pass_interval_ms);
    }
    return NULL;
}

static void *records(void *unused)
{
    (void)unused;
    int fd = open(record_file, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0) {
        printf("CONT: cannot open %s: %s\n", record_file, strerror(errno));
        fflush(stdout);
        exit(1);
    }
    for (uint64_t n = 1;; n++) {
        char rec[RECORD_LEN + 1];
        snprintf(rec, sizeof rec, "rec %011llu\n", (unsigned long long)n);
        if (write(fd, rec, RECORD_LEN) != RECORD_LEN || fsync(fd) != 0) {
            printf("CONT: record %llu failed: %s\n", (unsigned long long)n, strerror(errno));
            fflush(stdout);
            sleep_ms(1000);
            n--;
            continue;
        }
        acked = n;
        sleep_ms(50);
    }
    return NULL;
}

static void *echo_one(void *arg)
{
    int c = (int)(intptr_t)arg;
    char buf[4096];
    ssize_t n;
    printf("CONT: tcp client connected\n");
    fflush(stdout);
    while ((n = read(c, buf, sizeof buf)) > 0)
        if (write(c, buf, n) != n)
            break;
    printf("CONT: tcp client gone\n");
    fflush(stdout);
    close(c);
    return NULL;
}

static void *echo(void *unused)
{
    (void)unused;
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4)) {
        printf("CONT: cannot listen on port %d: %s\n", port, strerror(errno));
        fflush(stdout);
        exit(1);
    }
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        pthread_create(&t, NULL, echo_one, (void *)(intptr_t)c);
        pthread_detach(t);
    }
    return NULL;
}

/* Kernel messages about the guest's clocks, from the start of the log on. */
static void *kmsg(void *unused)
{
    (void)unused;
    int fd = open("/dev/kmsg", O_RDONLY);
    if (fd < 0)
        return NULL;
    char buf[1024];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n < 0) {
            if (errno == EPIPE || errno == EINTR)
                continue;
            return NULL;
        }
        buf[n] = 0;
        /* "level,seq,usec,flags;text\n" */
        char *text = strchr(buf, ';');
        text = text ? text + 1 : buf;
        char *nl = strchr(text, '\n');
        if (nl)
            *nl = 0;
        if (strcasestr(text, "clocksource") || strstr(text, "TSC") || strstr(text, "tsc:") ||
            strcasestr(text, "timekeeping") || strcasestr(text, "watchdog"))
            printf("CONT: KMSG %s\n", text);
    }
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "m:i:r:p:")) != -1) {
        switch (opt) {
        case 'm': ws_pages = strtoull(optarg, NULL, 0) * 256; break;
        case 'i': pass_interval_ms = strtoul(optarg, NULL, 0); break;
        case 'r': record_file = optarg; break;
        case 'p': port = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: continuity [-m MiB] [-i ms] [-r FILE|-] [-p PORT|0]\n");
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, NULL, memory, NULL);
    if (strcmp(record_file, "-"))
        pthread_create(&t, NULL, records, NULL);
    if (port)
        pthread_create(&t, NULL, echo, NULL);
    pthread_create(&t, NULL, kmsg, NULL);
    printf("CONT: started, working set %zu pages every %u ms, records %s, echo port %d\n", ws_pages, pass_interval_ms,
           record_file, port);
    uint64_t last = now_ms(CLOCK_MONOTONIC), maxgap = 0;
    for (uint64_t hb = 1;; hb++) {
        sleep_ms(250);
        uint64_t mono = now_ms(CLOCK_MONOTONIC);
        if (mono - last > maxgap)
            maxgap = mono - last;
        last = mono;
        printf("CONT: hb=%llu mono_ms=%llu real_ms=%llu pass=%llu rec=%llu maxgap_ms=%llu corrupt=%llu\n",
               (unsigned long long)hb, (unsigned long long)mono, (unsigned long long)now_ms(CLOCK_REALTIME),
               (unsigned long long)passes, (unsigned long long)acked, (unsigned long long)maxgap,
               (unsigned long long)corrupt);
    }
}
