/* Thread wake-up latency on this machine (docs/performance.md, session 14).
 *
 * Two threads pinned to cores 0 and 1 hand a flag back and forth N times; prints the mean round
 * trip. mode 0: the waiting thread sleeps in futex (as XLA:CPU's pool threads do when idle);
 * mode 1: it spins (as OpenMP threads do for a while, torch's among them). With GAP_US > 0 (futex
 * mode) the first thread sleeps that long before each round, so both cores have gone idle when
 * the round starts.
 *
 *   gcc -O2 -pthread benchmarks/wakeup/pingpong.c -o /tmp/pingpong
 *   /tmp/pingpong 1 200000 0; /tmp/pingpong 0 20000 0; /tmp/pingpong 0 5000 200; /tmp/pingpong 0 5000 1000
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int flag = 0;
static int rounds = 20000, spin = 0;

static void wait_for(int v) {
    while (atomic_load(&flag) != v) {
        int seen = atomic_load(&flag);
        if (!spin && seen != v) syscall(SYS_futex, &flag, FUTEX_WAIT_PRIVATE, seen, 0, 0, 0);
    }
}

static void set_to(int v) {
    atomic_store(&flag, v);
    if (!spin) syscall(SYS_futex, &flag, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0);
}

static void *echo(void *unused) {
    for (int i = 0; i < rounds; i++) { wait_for(1); set_to(0); }
    return unused;
}

static void pin(pthread_t t, int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(t, sizeof s, &s);
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: pingpong MODE(0 futex|1 spin) ROUNDS GAP_US\n"); return 2; }
    spin = atoi(argv[1]);
    rounds = atoi(argv[2]);
    double gap_us = atof(argv[3]);
    pthread_t t;
    pthread_create(&t, 0, echo, 0);
    pin(pthread_self(), 0);
    pin(t, 1);
    double total_us = 0;
    for (int i = 0; i < rounds; i++) {
        if (gap_us > 0 && !spin) usleep((useconds_t)gap_us);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        set_to(1);
        wait_for(0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        total_us += (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
    }
    pthread_join(t, 0);
    printf("mode=%s gap=%gus round trip %.2f us\n", spin ? "spin" : "futex", gap_us, total_us / rounds);
    return 0;
}
