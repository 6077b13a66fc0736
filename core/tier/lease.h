/*
 * Pins: a client's promise-keeping leases on models, components and tiers.
 *
 * A pin is the triple (model, component, tier) held by one client; component WD_ID_NONE
 * pins the whole model. A client holds a given triple at most once (pinning it again is a
 * no-op that reports "already held"). Every client's pins hang off its struct lease; the
 * struct lease_table links all leases and keeps the per-model pin counts the registry
 * publishes. When a client's socket closes, lease_release_all() drops everything it held.
 *
 * Nothing here locks: the daemon and the cache tiers (core/tier/tier.h) call every function
 * with the daemon's state lock held.
 */
#ifndef WD_CORE_TIER_LEASE_H
#define WD_CORE_TIER_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lease_pin {
	uint32_t model;
	uint32_t component;	/* WD_ID_NONE: the whole model */
	uint32_t tier;
};

struct lease {
	struct lease_pin *pins;
	size_t n, cap;
	struct lease *next, *prev;	/* in the table's list */
	bool linked;
};

struct lease_table {
	uint32_t *model_pins;	/* pins on each model, indexed by registry model index */
	size_t n_models;
	uint64_t total;		/* pins held by all leases */
	struct lease *head;
};

void lease_table_init(struct lease_table *t);
/* Frees the table's arrays; leases still linked are unlinked (their pins are freed too). */
void lease_table_free(struct lease_table *t);

/* Makes room for models [0, @n_models). Returns 0 or -ENOMEM. */
int lease_table_grow(struct lease_table *t, size_t n_models);

/* Links an empty @l into @t. */
void lease_init(struct lease_table *t, struct lease *l);

/*
 * Adds pin @p to @l. Returns 1 when @l already held it (nothing changes), 0 when it was
 * added (the model's count goes up by one), -EINVAL when p->model is beyond the table, or
 * -ENOMEM.
 */
int lease_pin(struct lease_table *t, struct lease *l, const struct lease_pin *p);

/* Removes pin @p from @l. Returns 0, or -ENOENT when @l does not hold it. */
int lease_unpin(struct lease_table *t, struct lease *l, const struct lease_pin *p);

/*
 * Drops every pin of @l, calling @changed (when not NULL) once per pin with its model after
 * the model's count went down, and unlinks @l from @t. Returns how many pins were dropped.
 */
size_t lease_release_all(struct lease_table *t, struct lease *l,
			 void (*changed)(uint32_t model, void *arg), void *arg);

/* Releases every pin of @l (lease_release_all() without a callback) and frees its memory. */
void lease_free(struct lease_table *t, struct lease *l);

/* Pins held on @model by every lease (0 for a model beyond the table). */
uint32_t lease_model_pins(const struct lease_table *t, uint32_t model);

/*
 * Whether a lease other than @self holds a pin that covers (@model, @component, @tier): the
 * same triple, or a whole-model pin of @model on @tier, or (when @component is WD_ID_NONE)
 * any pin of @model on @tier.
 */
bool lease_pinned_by_other(const struct lease_table *t, const struct lease *self,
			   uint32_t model, uint32_t component, uint32_t tier);

/* Pins @l holds. */
static inline size_t lease_count(const struct lease *l)
{
	return l->n;
}

#endif
