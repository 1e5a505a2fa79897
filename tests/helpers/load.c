/* Load and fault workloads run *inside* an mstack tree; they report facts as JSON.
 *
 * Usage: load steps TAG SPEC...   print {"tag": TAG}; then, for each SPEC, wait for a line
 *                                 on stdin, run it and print one JSON line; wait for one
 *                                 more line before exiting (TAG marks the command line)
 *        load one FD              (internal) one AF_INET and one AF_UNIX socket, their
 *                                 cookies or errnos appended to FD as one line
 * SPEC is a command and its comma-separated numbers:
 *   load,PROCS,THREADS,MS,MAX,FAMILY  PROCS processes x THREADS threads, socket()+close()
 *                                     for MS milliseconds or MAX calls per thread
 *   storm,COUNT,PARALLEL              COUNT fork+exec of "load one", PARALLEL at a time
 *   emfile,FULL,OK,THREADS,MS         FULL processes with a full fd table and OK processes,
 *                                     THREADS threads each, calling socket() for MS ms
 *   kill,ROUNDS,VTHREADS,SURV,STHREADS,MS
 *                                     SURV processes keep calling socket() while ROUNDS
 *                                     victims with VTHREADS threads each are SIGKILLed in
 *                                     the middle of their calls (at most MS ms in all)
 *   sync                              one AF_UNIX socket(): its cookie
 * Every loop is bounded in count and in time; a thread that never comes back from socket()
 * is reported ("stuck"), not waited for.
 * Build: cc -O2 -Wall -pthread -o load load.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cookie.h"

#define MAX_THREADS 64
#define MAX_ERRNO 160
#define MAX_COOKIES 4
#define GRACE_MS 20000 /* how long past its end a worker may take before it counts as stuck */

/* One worker thread's counters, in memory shared with the parent across fork. */
struct stats {
    volatile long attempted, returned, ok;
    volatile long errors[MAX_ERRNO];
    volatile uint64_t cookies[MAX_COOKIES];
    volatile int ncookies, extra_cookies;
};

struct job {
    struct stats *st;
    int family;
    long max_calls;
    double deadline; /* CLOCK_MONOTONIC seconds; 0: none */
    volatile int *stop;
};

static char self_exe[4096];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *shared(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

static void note_cookie(struct stats *st, uint64_t c) {
    for (int i = 0; i < st->ncookies; i++)
        if (st->cookies[i] == c)
            return;
    if (st->ncookies < MAX_COOKIES)
        st->cookies[st->ncookies++] = c;
    else
        st->extra_cookies++;
}

static void one_call(struct stats *st, int family) {
    st->attempted++;
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int err = errno;
    st->returned++;
    if (fd < 0) {
        st->errors[err < MAX_ERRNO ? err : 0]++;
        return;
    }
    st->ok++;
    note_cookie(st, netns_cookie(fd));
    close(fd);
}

static void *hammer(void *arg) {
    struct job *j = arg;
    while (!*j->stop && j->st->attempted < j->max_calls && (!j->deadline || now() < j->deadline))
        one_call(j->st, j->family);
    return NULL;
}

/* Run ``n`` workers on consecutive stats in this process and join them. */
static void run_threads(struct stats *st, int n, int family, long max_calls, double deadline,
                        volatile int *stop) {
    pthread_t t[MAX_THREADS];
    struct job jobs[MAX_THREADS];
    for (int i = 0; i < n; i++) {
        jobs[i] = (struct job){&st[i], family, max_calls, deadline, stop};
        if (pthread_create(&t[i], NULL, hammer, &jobs[i]) != 0)
            _exit(3);
    }
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
}

/* fork(), the child dying with us: a test that gives up on us kills only this process. */
static pid_t spawn(void) {
    pid_t parent = getpid(), pid = fork();
    if (pid == 0 && (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent))
        _exit(5);
    return pid;
}

/* Wait for ``pid`` until ``limit`` (monotonic seconds); kill it if it is still there. */
static int reap(pid_t pid, double limit) {
    int status;
    while (now() < limit) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) && WEXITSTATUS(status) == 0;
        usleep(1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 0;
}

static void print_errors(volatile long *errors) {
    printf("{");
    const char *sep = "";
    for (int e = 0; e < MAX_ERRNO; e++)
        if (errors[e]) {
            const char *name = e ? strerrorname_np(e) : "E?";
            printf("%s\"%s\": %ld", sep, name ? name : "E?", errors[e]);
            sep = ", ";
        }
    printf("}");
}

/* Totals of ``n`` workers, plus each one's [attempted, returned]. */
static void print_stats(const char *key, struct stats *st, int n) {
    struct stats sum = {0};
    for (int i = 0; i < n; i++) {
        sum.attempted += st[i].attempted;
        sum.returned += st[i].returned;
        sum.ok += st[i].ok;
        for (int e = 0; e < MAX_ERRNO; e++)
            sum.errors[e] += st[i].errors[e];
        for (int c = 0; c < st[i].ncookies; c++)
            note_cookie(&sum, st[i].cookies[c]);
        sum.extra_cookies += st[i].extra_cookies;
    }
    printf("\"%s\": {\"attempted\": %ld, \"returned\": %ld, \"ok\": %ld, \"errors\": ", key,
           sum.attempted, sum.returned, sum.ok);
    print_errors(sum.errors);
    printf(", \"cookies\": [");
    for (int c = 0; c < sum.ncookies; c++)
        printf("%s%llu", c ? ", " : "", (unsigned long long)sum.cookies[c]);
    printf("], \"extra_cookies\": %d, \"threads\": [", sum.extra_cookies);
    for (int i = 0; i < n; i++)
        printf("%s[%ld, %ld]", i ? ", " : "", st[i].attempted, st[i].returned);
    printf("]}");
}

static void cmd_load(int procs, int threads, int ms, long max_calls, int family) {
    int n = procs * threads;
    struct stats *st = shared(sizeof *st * n);
    volatile int *stop = shared(sizeof *stop);
    double deadline = now() + ms / 1000.0;
    pid_t pids[MAX_THREADS];
    for (int p = 0; p < procs; p++) {
        pids[p] = spawn();
        if (pids[p] == 0) {
            run_threads(&st[p * threads], threads, family, max_calls, deadline, stop);
            _exit(0);
        }
    }
    int clean = 0;
    for (int p = 0; p < procs; p++)
        clean += reap(pids[p], deadline + GRACE_MS / 1000.0);
    printf("{\"processes\": %d, \"clean_exits\": %d, ", procs, clean);
    print_stats("calls", st, n);
    printf("}\n");
    munmap(st, sizeof *st * n);
    munmap((void *)stop, sizeof *stop);
}

static void cmd_one(int out) {
    char line[128];
    int fds[2] = {socket(AF_INET, SOCK_DGRAM, 0), -1};
    int err4 = errno;
    fds[1] = socket(AF_UNIX, SOCK_DGRAM, 0);
    int erru = errno;
    int len = snprintf(line, sizeof line, "%llu %llu %d %d\n",
                       (unsigned long long)(fds[0] < 0 ? 0 : netns_cookie(fds[0])),
                       (unsigned long long)(fds[1] < 0 ? 0 : netns_cookie(fds[1])),
                       fds[0] < 0 ? err4 : 0, fds[1] < 0 ? erru : 0);
    _exit(write(out, line, len) == len ? 0 : 1);
}

/* Tally of "inet unix err4 erru" lines: distinct values and how often each came. */
struct tally {
    unsigned long long value[8];
    long count[8];
    int n;
    long other;
};

static void tally_add(struct tally *t, unsigned long long v) {
    for (int i = 0; i < t->n; i++)
        if (t->value[i] == v) {
            t->count[i]++;
            return;
        }
    if (t->n < 8) {
        t->value[t->n] = v;
        t->count[t->n++] = 1;
    } else {
        t->other++;
    }
}

static void print_tally(const char *key, struct tally *t) {
    printf("\"%s\": {", key);
    for (int i = 0; i < t->n; i++)
        printf("%s\"%llu\": %ld", i ? ", " : "", t->value[i], t->count[i]);
    printf("%s\"other\": %ld}", t->n ? ", " : "", t->other);
}

static void cmd_storm(int count, int parallel, double limit) {
    /* No CLOEXEC: the children write into it. O_APPEND: a memfd has no FMODE_ATOMIC_POS,
     * so concurrent writers sharing its offset would overwrite each other's lines. */
    int out = memfd_create("storm", 0);
    fcntl(out, F_SETFL, O_APPEND);
    char fdarg[16];
    snprintf(fdarg, sizeof fdarg, "%d", out);
    int spawned = 0, running = 0, clean = 0;
    while ((spawned < count || running > 0) && now() < limit) {
        if (spawned < count && running < parallel) {
            pid_t pid = spawn();
            if (pid == 0) {
                execl(self_exe, self_exe, "one", fdarg, (char *)NULL);
                _exit(127);
            }
            spawned += pid > 0;
            running += pid > 0;
            continue;
        }
        int status;
        if (waitpid(-1, &status, 0) > 0) {
            running--;
            clean += WIFEXITED(status) && WEXITSTATUS(status) == 0;
        }
    }
    while (running > 0 && waitpid(-1, NULL, 0) > 0) /* only past the time limit */
        running--;
    struct tally inet = {0}, unix_ = {0}, errs = {0};
    long records = 0;
    FILE *f = fdopen(out, "r");
    rewind(f);
    unsigned long long c4, cu;
    int e4, eu;
    while (fscanf(f, "%llu %llu %d %d", &c4, &cu, &e4, &eu) == 4) {
        records++;
        tally_add(&inet, c4);
        tally_add(&unix_, cu);
        tally_add(&errs, (unsigned long long)e4 << 16 | eu);
    }
    fclose(f);
    printf("{\"spawned\": %d, \"clean_exits\": %d, \"records\": %ld, ", spawned, clean, records);
    print_tally("inet", &inet);
    printf(", ");
    print_tally("unix", &unix_);
    printf(", ");
    print_tally("errnos", &errs);
    printf("}\n");
}

/* A process whose fd table is full (RLIMIT_NOFILE 64): its threads must all see EMFILE;
 * then it frees two fds and must get a socket again. */
static void emfile_process(struct stats *st, struct stats *after, int threads, double deadline,
                           volatile int *stop) {
    struct rlimit rl = {64, 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        _exit(4);
    int last = -1;
    while (1) {
        int fd = dup(0);
        if (fd < 0)
            break;
        last = fd;
    }
    run_threads(st, threads, AF_INET, 1L << 40, deadline, stop);
    close(last);
    close(last - 1);
    one_call(after, AF_INET);
    _exit(0);
}

static void cmd_emfile(int full, int okprocs, int threads, int ms) {
    int nfull = full * threads, nok = okprocs * threads;
    struct stats *st = shared(sizeof *st * (nfull + nok + full));
    volatile int *stop = shared(sizeof *stop);
    double deadline = now() + ms / 1000.0;
    pid_t pids[MAX_THREADS];
    for (int p = 0; p < full + okprocs; p++) {
        pids[p] = spawn();
        if (pids[p] == 0 && p < full)
            emfile_process(&st[p * threads], &st[nfull + nok + p], threads, deadline, stop);
        if (pids[p] == 0) {
            run_threads(&st[p * threads], threads, AF_INET, 1L << 40, deadline, stop);
            _exit(0);
        }
    }
    int clean = 0;
    for (int p = 0; p < full + okprocs; p++)
        clean += reap(pids[p], deadline + GRACE_MS / 1000.0);
    printf("{\"clean_exits\": %d, ", clean);
    print_stats("full", st, nfull);
    printf(", ");
    print_stats("others", &st[nfull], nok);
    printf(", ");
    print_stats("full_after", &st[nfull + nok], full);
    printf("}\n");
}

static void cmd_kill(int rounds, int vthreads, int surv, int sthreads, int ms) {
    int nsurv = surv * sthreads;
    struct stats *st = shared(sizeof *st * (nsurv + vthreads));
    struct stats *victim = &st[nsurv];
    volatile int *stop = shared(sizeof *stop);
    double end = now() + ms / 1000.0;
    pid_t pids[MAX_THREADS];
    for (int p = 0; p < surv; p++) {
        pids[p] = spawn();
        if (pids[p] == 0) {
            run_threads(&st[p * sthreads], sthreads, AF_INET, 1L << 40, end + 5, stop);
            _exit(0);
        }
    }
    int done = 0, killed = 0, started = 0;
    for (; done < rounds && now() < end; done++) {
        memset(victim, 0, sizeof *victim * vthreads);
        pid_t pid = spawn();
        if (pid == 0) /* never returns: its threads call socket() until it is killed */
            run_threads(victim, vthreads, AF_INET, 1L << 40, end + 5, stop);
        if (pid == 0)
            _exit(0);
        long calls = 0; /* let every thread start and most of them be mid-call */
        for (double until = now() + 2; now() < until && calls < vthreads;) {
            calls = 0;
            for (int i = 0; i < vthreads; i++)
                calls += victim[i].returned > 0;
        }
        started += calls == vthreads;
        usleep(rand() % 2000);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    }
    *stop = 1;
    int clean = 0;
    for (int p = 0; p < surv; p++)
        clean += reap(pids[p], now() + GRACE_MS / 1000.0);
    struct stats after = {0};
    one_call(&after, AF_INET);
    printf("{\"rounds\": %d, \"started\": %d, \"killed\": %d, \"clean_exits\": %d, ", done,
           started, killed, clean);
    print_stats("survivors", st, nsurv);
    printf(", ");
    print_stats("after", &after, 1);
    printf("}\n");
}

static void cmd_sync(void) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        printf("{\"errno\": \"%s\"}\n", strerrorname_np(errno));
        return;
    }
    printf("{\"cookie\": %llu}\n", (unsigned long long)netns_cookie(fd));
    close(fd);
}

static void run_spec(char *spec) {
    long a[6] = {0};
    char *cmd = strtok(spec, ",");
    for (int i = 0; i < 6; i++) {
        char *tok = strtok(NULL, ",");
        if (!tok)
            break;
        a[i] = strtol(tok, NULL, 10);
    }
    for (int i = 0; i < 6; i++)
        if (a[i] < 0 || a[i] > 1000000)
            a[i] = 0; /* the products below then stay small */
    if (!strcmp(cmd, "load") && a[0] * a[1] <= MAX_THREADS) {
        cmd_load(a[0], a[1], a[2], a[3], a[4]);
    } else if (!strcmp(cmd, "storm")) {
        cmd_storm(a[0], a[1], now() + 45);
    } else if (!strcmp(cmd, "emfile") && (a[0] + a[1]) * a[2] + a[0] <= MAX_THREADS) {
        cmd_emfile(a[0], a[1], a[2], a[3]);
    } else if (!strcmp(cmd, "kill") && a[2] * a[3] + a[1] <= MAX_THREADS) {
        cmd_kill(a[0], a[1], a[2], a[3], a[4]);
    } else if (!strcmp(cmd, "sync")) {
        cmd_sync();
    } else {
        printf("{\"error\": \"bad spec %s\"}\n", cmd);
    }
}

int main(int argc, char **argv) {
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n < 0)
        return 2;
    self_exe[n] = 0;
    if (argc == 3 && !strcmp(argv[1], "one"))
        cmd_one(atoi(argv[2]));
    if (argc < 3 || strcmp(argv[1], "steps")) {
        fprintf(stderr, "usage: load steps TAG SPEC... | load one FD\n");
        return 2;
    }
    srand(getpid());
    printf("{\"tag\": \"%s\"}\n", argv[2]);
    for (int i = 3; i < argc; i++) {
        char line[16];
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin))
            return 0;
        run_spec(argv[i]);
    }
    fflush(stdout);
    char line[16]; /* stay alive (and the tree with us) until the test has looked */
    return fgets(line, sizeof line, stdin) ? 0 : 0;
}
