/* Keeps every core from going idle without taking time from real work (docs/performance.md,
 * session 14): one busy-looping SCHED_IDLE thread per core, which runs only when nothing else
 * wants the core. On a VM whose idle vCPUs halt, a thread woken there then starts sooner.
 *
 *   gcc -O2 -pthread benchmarks/wakeup/spin.c -o /tmp/spin
 *   /tmp/spin & SPIN=$!; python -m modgpt.bench ...; kill $SPIN
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>

static void *run(void *arg) {
    long cpu = (long)arg;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
    struct sched_param p = {0};
    if (sched_setscheduler(0, SCHED_IDLE, &p)) perror("sched_setscheduler(SCHED_IDLE)");
    for (;;) __asm__ __volatile__("pause");
    return 0;
}

int main(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        pthread_create(&t, 0, run, (void *)i);
    }
    pause();
    return 0;
}
