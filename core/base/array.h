/*
 * Growable arrays: the one helper behind every "append to a realloc'ed array" in core/.
 */
#ifndef WD_CORE_ARRAY_H
#define WD_CORE_ARRAY_H

#include <stddef.h>

/*
 * Makes room for index @n in the array at *@v (elements of @size bytes, *@cap of them
 * allocated): when @n >= *@cap the array is reallocated to twice its capacity (16 at
 * first) and the new elements are zeroed. Returns 0, or -ENOMEM with *@v and *@cap as they
 * were.
 */
int wd_grow(void *v, size_t *cap, size_t n, size_t size);

#endif
