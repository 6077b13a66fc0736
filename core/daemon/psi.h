/*
 * Memory pressure from the kernel's pressure stall information (PSI, /proc/pressure/memory),
 * watched on the daemon's control thread so that the host cache can give memory back before
 * the machine starts to thrash.
 *
 * The file's first line is "some avg10=A avg60=B avg300=C total=T": A is the share of the
 * last 10 seconds (percent) in which at least one task waited for memory. Pressure is "over"
 * when A >= the threshold. Two ways to notice it, chosen by psi_open():
 *
 *   trigger   when the path is on procfs and the kernel accepts a trigger written to it
 *             ("some STALL_US 2000000": stalled at least threshold% of a 2 s window), the
 *             descriptor polls with EPOLLPRI when that happens. The kernel checks it, so the
 *             daemon sleeps while nothing happens.
 *   polling   otherwise (an older kernel, no permission, or a plain file standing in for it
 *             in a test): a timerfd ticks every interval_ms and the file is read again.
 *
 * Either way, psi_poll() after an event reads the file and says whether avg10 is over the
 * threshold. A missing or unreadable file makes psi_open() fail: the caller logs that once and
 * runs without it.
 *
 * The path is $WEIGHTD_PSI_PATH when set (tests write a fake file there), else the
 * daemon_config's psi_path, else PSI_DEFAULT_PATH.
 */
#ifndef WD_CORE_PSI_H
#define WD_CORE_PSI_H

#include <stdbool.h>
#include <stdint.h>

#define PSI_DEFAULT_PATH "/proc/pressure/memory"
#define PSI_PATH_ENV "WEIGHTD_PSI_PATH"
#define PSI_DEFAULT_INTERVAL_MS 1000u
#define PSI_TRIGGER_WINDOW_US 2000000u	/* unprivileged triggers need a multiple of 2 s */

struct psi_options {
	const char *path;	/* NULL: $WEIGHTD_PSI_PATH, else PSI_DEFAULT_PATH */
	uint32_t some_pct;	/* threshold on "some avg10", 1..100 */
	uint32_t interval_ms;	/* polling period; 0: PSI_DEFAULT_INTERVAL_MS */
};

struct psi;

/*
 * Opens the pressure file and sets up the trigger or the timer (see above). Returns 0 and
 * sets *@out; -EINVAL for a threshold outside 1..100; -ENOMEM; or the negative errno of
 * open(2), read(2) (the file must parse: -EBADMSG otherwise) or timerfd_create(2).
 */
int psi_open(const struct psi_options *opt, struct psi **out);

void psi_close(struct psi *p);

/* The descriptor to watch and the epoll events to watch it for (EPOLLPRI or EPOLLIN). */
int psi_fd(const struct psi *p);
uint32_t psi_events(const struct psi *p);

/* Whether the kernel trigger is in use (else the file is polled); the path in use. */
bool psi_triggered(const struct psi *p);
const char *psi_path(const struct psi *p);

/*
 * After an event on psi_fd(): consumes it, reads the file, and stores "some avg10" in
 * *@avg10. Returns 1 when it is at or over the threshold, 0 when not, or the negative errno
 * of the read (-EBADMSG when the text does not parse).
 */
int psi_poll(struct psi *p, double *avg10);

/*
 * Parses PSI text (the file's contents, NUL-terminated): stores the "some" line's avg10.
 * Returns 0 or -EBADMSG.
 */
int psi_parse(const char *text, double *some_avg10);

#endif
