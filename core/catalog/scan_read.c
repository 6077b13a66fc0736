/*
 * Discovery's reads (phase 4): the files of the models whose signature changed, read by a
 * small pool of threads (model_file_load: header parsed, checked and hashed) while this
 * thread reports progress.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "core/catalog/scan_internal.h"

#define MAX_THREADS 8

struct pool {
	struct model_file **files;
	size_t n;
	atomic_size_t next;
	atomic_size_t done;
	const struct scan_options *opt;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

static void *reader(void *arg)
{
	struct pool *pl = arg;
	size_t i;

	while ((i = atomic_fetch_add(&pl->next, 1)) < pl->n) {
		if (pl->opt && pl->opt->before_read)
			pl->opt->before_read(pl->files[i]->path, pl->opt->hook_arg);
		model_file_load(pl->files[i]);
		if (atomic_fetch_add(&pl->done, 1) + 1 == pl->n) {
			pthread_mutex_lock(&pl->mu);
			pthread_cond_signal(&pl->cv);
			pthread_mutex_unlock(&pl->mu);
		}
	}
	return NULL;
}

unsigned scan_default_threads(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = cpus > 0 ? (unsigned)cpus * 2 : 2;

	return n < MAX_THREADS ? n : MAX_THREADS;
}

void scan_progress(struct scan *sc, uint64_t done, uint64_t total)
{
	if (sc->opt && sc->opt->progress)
		sc->opt->progress(done, total, sc->opt->progress_arg);
}

/* Reads @n files with a small thread pool, reporting progress from this thread. */
void scan_read_files(struct scan *sc, struct model_file **files, size_t n, uint64_t base,
		       uint64_t total)
{
	struct pool pl = { .files = files, .n = n, .opt = sc->opt };
	pthread_t tids[MAX_THREADS];
	unsigned want = sc->opt && sc->opt->threads ? sc->opt->threads : scan_default_threads();
	unsigned nt = 0;

	if (want > MAX_THREADS)
		want = MAX_THREADS;
	if (want > n)
		want = (unsigned)n;
	atomic_init(&pl.next, 0);
	atomic_init(&pl.done, 0);
	pthread_mutex_init(&pl.mu, NULL);
	pthread_cond_init(&pl.cv, NULL);
	for (; nt < want; nt++)
		if (pthread_create(&tids[nt], NULL, reader, &pl))
			break;
	if (!nt) {
		reader(&pl); /* no thread could start: read here */
	} else {
		pthread_mutex_lock(&pl.mu);
		while (atomic_load(&pl.done) < n) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 100000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&pl.cv, &pl.mu, &ts);
			pthread_mutex_unlock(&pl.mu);
			scan_progress(sc, base + atomic_load(&pl.done), total);
			pthread_mutex_lock(&pl.mu);
		}
		pthread_mutex_unlock(&pl.mu);
		for (unsigned i = 0; i < nt; i++)
			pthread_join(tids[i], NULL);
	}
	pthread_cond_destroy(&pl.cv);
	pthread_mutex_destroy(&pl.mu);
	sc->res->n_parsed += n;
}

