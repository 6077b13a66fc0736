/*
 * The emulated driver's process-wide state and the rules every part of it checks (declared in
 * gpu/emu_int.h): the process lock and counters, the process that initialised the driver (a
 * forked child is refused), and the thread's current context ([ctx] operations need it).
 * The driver (gpu/emu_dev.c), memory (gpu/emu_mem.c) and streams (gpu/emu_stream.c) call
 * these; this file calls none of them.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "gpu/emu_int.h"

pthread_mutex_t emu_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic pid_t emu_pid;		/* the process that initialised the driver; 0: none */
_Thread_local struct emu_ordinal *emu_cur_ctx;	/* the thread's current context */
_Atomic uint64_t emu_locked_bytes, emu_registrations, emu_refused;

/* A rule broken: counted, and for void operations said on stderr (nothing else can). */
void emu_refuse_void(const char *what, const char *why)
{
	atomic_fetch_add(&emu_refused, 1);
	fprintf(stderr, "weightd emulated GPU: %s refused: %s\n", what, why);
}

/* CUDA state does not survive fork(): a child of the initialising process is refused. */
bool emu_forked(void)
{
	pid_t p = atomic_load(&emu_pid);

	return p && p != getpid();
}

int emu_init_check(const char *what, char *why, size_t why_size)
{
	pid_t zero = 0, me = getpid();

	if (atomic_compare_exchange_strong(&emu_pid, &zero, me) || zero == me)
		return 0;
	atomic_fetch_add(&emu_refused, 1);
	snprintf(why, why_size, "%s: CUDA_ERROR_NOT_INITIALIZED: the emulated driver was "
		 "initialised in process %d, and this is a child forked after that (CUDA state "
		 "does not survive fork(); start helpers with fork+exec)", what, (int)zero);
	return -EIO;
}

/* [ctx] operations: @dev's context must be current on this thread. */
int emu_need_ctx(struct gpu_dev *dev, const char *what, char *why, size_t why_size)
{
	if (emu_forked())
		return emu_init_check(what, why, why_size);
	if (emu_cur_ctx == dev->ord)
		return 0;
	atomic_fetch_add(&emu_refused, 1);
	snprintf(why, why_size, "%s on emulated cuda:%d: CUDA_ERROR_INVALID_CONTEXT: %s", what,
		 dev->ordinal, emu_cur_ctx ? "another device's context is current on this thread" :
		 "no current context on this thread");
	return -EINVAL;
}

/* emu_need_ctx() for an operation that cannot return an error. */
bool emu_void_ctx_ok(struct gpu_dev *dev, const char *what)
{
	char why[200];

	if (emu_forked())
		return false;	/* a forked child: silently nothing, as the driver does */
	if (!emu_need_ctx(dev, what, why, sizeof(why)))
		return true;
	atomic_fetch_sub(&emu_refused, 1);	/* counted once, by emu_refuse_void() */
	emu_refuse_void(what, why);
	return false;
}
