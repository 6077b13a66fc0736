/* Pins per client and per model; see core/tier/lease.h. */
#include "core/tier/lease.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shm/abi.h"

void lease_table_init(struct lease_table *t)
{
	memset(t, 0, sizeof(*t));
}

void lease_table_free(struct lease_table *t)
{
	while (t->head) {
		struct lease *l = t->head;

		lease_free(t, l);
	}
	free(t->model_pins);
	memset(t, 0, sizeof(*t));
}

int lease_table_grow(struct lease_table *t, size_t n_models)
{
	uint32_t *p;

	if (n_models <= t->n_models)
		return 0;
	p = realloc(t->model_pins, n_models * sizeof(*p));
	if (!p)
		return -ENOMEM;
	memset(p + t->n_models, 0, (n_models - t->n_models) * sizeof(*p));
	t->model_pins = p;
	t->n_models = n_models;
	return 0;
}

void lease_init(struct lease_table *t, struct lease *l)
{
	memset(l, 0, sizeof(*l));
	l->next = t->head;
	if (t->head)
		t->head->prev = l;
	t->head = l;
	l->linked = true;
}

static bool same(const struct lease_pin *a, const struct lease_pin *b)
{
	return a->model == b->model && a->component == b->component && a->tier == b->tier;
}

static ssize_t find(const struct lease *l, const struct lease_pin *p)
{
	for (size_t i = 0; i < l->n; i++)
		if (same(&l->pins[i], p))
			return (ssize_t)i;
	return -1;
}

int lease_pin(struct lease_table *t, struct lease *l, const struct lease_pin *p)
{
	if (p->model >= t->n_models)
		return -EINVAL;
	if (find(l, p) >= 0)
		return 1;
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 8;
		struct lease_pin *np = realloc(l->pins, cap * sizeof(*np));

		if (!np)
			return -ENOMEM;
		l->pins = np;
		l->cap = cap;
	}
	l->pins[l->n++] = *p;
	t->model_pins[p->model]++;
	t->total++;
	return 0;
}

int lease_unpin(struct lease_table *t, struct lease *l, const struct lease_pin *p)
{
	ssize_t i = find(l, p);

	if (i < 0)
		return -ENOENT;
	l->pins[i] = l->pins[--l->n];
	t->model_pins[p->model]--;
	t->total--;
	return 0;
}

size_t lease_release_all(struct lease_table *t, struct lease *l,
			 void (*changed)(uint32_t model, void *arg), void *arg)
{
	size_t n = l->n;

	while (l->n) {
		uint32_t model = l->pins[--l->n].model;

		t->model_pins[model]--;
		t->total--;
		if (changed)
			changed(model, arg);
	}
	if (l->linked) {
		if (l->prev)
			l->prev->next = l->next;
		else
			t->head = l->next;
		if (l->next)
			l->next->prev = l->prev;
		l->next = l->prev = NULL;
		l->linked = false;
	}
	return n;
}

void lease_free(struct lease_table *t, struct lease *l)
{
	lease_release_all(t, l, NULL, NULL);
	free(l->pins);
	l->pins = NULL;
	l->cap = 0;
}

uint32_t lease_model_pins(const struct lease_table *t, uint32_t model)
{
	return model < t->n_models ? t->model_pins[model] : 0;
}

static bool covers(const struct lease_pin *p, uint32_t model, uint32_t component, uint32_t tier)
{
	if (p->model != model || p->tier != tier)
		return false;
	return component == WD_ID_NONE || p->component == WD_ID_NONE || p->component == component;
}

bool lease_pinned_by_other(const struct lease_table *t, const struct lease *self,
			   uint32_t model, uint32_t component, uint32_t tier)
{
	for (const struct lease *l = t->head; l; l = l->next) {
		if (l == self)
			continue;
		for (size_t i = 0; i < l->n; i++)
			if (covers(&l->pins[i], model, component, tier))
				return true;
	}
	return false;
}
