/* Where weightd keeps its catalog and runtime files. */
#ifndef WD_CORE_STATEDIR_H
#define WD_CORE_STATEDIR_H

#include <stddef.h>

/*
 * Resolves the state directory: @option (from --state-dir) when not NULL, else
 * $WEIGHTD_STATE_DIR, else $XDG_STATE_HOME/weightd, else $HOME/.local/state/weightd.
 * Creates it (mode 0700, parents as needed). Writes the path into @out.
 * Returns 0, -ENAMETOOLONG, -ENOENT when neither XDG_STATE_HOME nor HOME is set, or the
 * negative errno of mkdir.
 */
int statedir_resolve(const char *option, char *out, size_t size);

/* mkdir -p with @mode for each missing component. Returns 0 or a negative errno. */
int mkdir_p(const char *path, unsigned mode);

#endif
