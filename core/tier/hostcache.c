/*
 * The host tier's lifecycle and its ops on the shard: create (arena, loader, policy,
 * quarantine, topology, saved co-access counts, the CUDA probe), stop and destroy; a LOAD
 * answered inline when every target is resident (a hit); UNLOAD, CACHE, the stats, the INFO
 * op's I/O flags and the metrics block; and the cancellation of loads whose requesters are
 * all gone. See core/tier/hostcache.h for the model and the threads.
 */
#include "core/tier/host_internal.h"

#include <unistd.h>

#include "core/policy/placement.h"
#include "gpu/cuda.h"

enum tier_outcome hostcache_load(struct hostcache *hc, struct tier_client *c,
				 const struct wd_sqe *sqe, const char *arg, uint16_t arg_len,
				 uint32_t model, struct wd_cqe *cqe, char *out)
{
	uint64_t now = wd_now_ns(), bytes = 0;
	uint32_t first, n, hits = 0;
	struct entry *hit[64];
	struct tier_form f;
	int ret;

	if (sqe->tier != WD_TIER_HOST) {
		cqe->data_len = tier_msg(out, "load: GPU tier not available: %s", hc->gpu_why);
		cqe->res = -ENOTSUP;
		return TIER_DONE;
	}
	ret = tier_parse_form(sqe, arg, arg_len, "load", &f, out, &cqe->data_len);
	if (ret) {
		cqe->res = ret;
		return TIER_DONE;
	}
	tier_targets(&hc->env, model, sqe->component, &first, &n);
	if (!n || n > ARRAY_SIZE(hit))
		return TIER_ASYNC;
	pthread_mutex_lock(&hc->lock);
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct entry *e = host_find_form(hc, cid, &f);

		/* A stale copy is not an answer: the worker loads the files as they are now. */
		if (!e || !e->resident || host_entry_stale(hc, e, cid))
			break;
		hit[hits++] = e;
	}
	if (hits != n) {
		pthread_mutex_unlock(&hc->lock);
		return TIER_ASYNC;
	}
	for (uint32_t i = 0; i < hits; i++) {
		/* A component listed twice (dedup) is one entry: count its bytes per component. */
		evict_lookup(hc->pol, hit[i]->key, now);
		evict_coaccess_record(hc->pol, hit[i]->ckey, now);
		hit[i]->last_use_ns = now;
		hit[i]->prefetched = false;
		bytes += hit[i]->tensor_bytes;
	}
	pthread_mutex_unlock(&hc->lock);
	if (sqe->flags & WD_SQE_F_PIN)
		tier_take_pin(&hc->env, c, &(struct lease_pin){ .model = model,
							       .component = sqe->component,
							       .tier = WD_TIER_HOST });
	cqe->res = 0;
	cqe->aux0 = bytes;
	cqe->aux1 = 0;
	return TIER_DONE;
}

/* An operator's UNLOAD clears the quarantine of registry components [@first, @first + @n). */
static void unquarantine(struct hostcache *hc, uint32_t first, uint32_t n)
{
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct wd_reg_component rc;
		struct wd_reg_model rm;
		char key[WD_NAME_MAX * 2 + 2];	/* as start_component() names it */

		if (registry_read_component(hc->env.view, cid, &rc) ||
		    registry_read_model(hc->env.view, rc.model, &rm))
			continue;
		snprintf(key, sizeof(key), "%s%s%s", rm.name, rc.name[0] ? "/" : "", rc.name);
		if (quarantine_clear(hc->q, key)) {
			pthread_mutex_lock(hc->env.state_lock);
			registry_set_state(hc->env.reg, cid, WD_TIER_HOST, WD_STATE_ABSENT, 0);
			pthread_mutex_unlock(hc->env.state_lock);
		}
	}
}

int64_t hostcache_unload(struct hostcache *hc, uint32_t model, uint32_t comp, char *out,
			 uint16_t *out_len)
{
	uint32_t first, n;
	int64_t freed = 0;

	tier_targets(&hc->env, model, comp, &first, &n);
	unquarantine(hc, first, n);
	pthread_mutex_lock(&hc->lock);
	for (struct entry *e = hc->entries; e; e = e->next) {
		for (uint32_t cid = first; cid < first + n; cid++) {
			if (((!e->resident && !e->cancelled) || e->holds) && host_find_bind(e, cid)) {
				pthread_mutex_unlock(&hc->lock);
				*out_len = tier_msg(out, "unload: %s is %s; retry when it ends", e->key,
						   e->holds ? "being copied to a GPU" : "loading");
				return -EBUSY;
			}
		}
	}
	for (struct entry *e = hc->entries, *next; e; e = next) {
		next = e->next;
		for (uint32_t cid = first; cid < first + n; cid++) {
			struct bind *b;

			if (!e->resident || !(b = host_find_bind(e, cid)))
				continue;
			if (e->n_binds == 1) {
				freed += (int64_t)e->size;
				host_drop_entry(hc, e, false);
				break;
			}
			/* Shared with another component: only this binding goes. */
			pthread_mutex_lock(hc->env.state_lock);
			host_unpublish_comp(hc, e, b);
			free(b->tids);
			*b = e->binds[--e->n_binds];
			host_refresh_state(hc, cid);
			pthread_mutex_unlock(hc->env.state_lock);
		}
	}
	pthread_mutex_unlock(&hc->lock);
	return freed;
}

uint32_t hostcache_list(struct hostcache *hc, uint32_t start, void *out, uint16_t *n_out)
{
	struct wd_cache_entry *v = out;
	uint64_t now = wd_now_ns();
	uint32_t i = 0, n = 0;

	pthread_mutex_lock(&hc->lock);
	host_sync_pins(hc);
	for (struct entry *e = hc->entries; e; e = e->next, i++) {
		if (i < start || n >= WD_CACHE_PER_REPLY)
			continue;
		v[n] = (struct wd_cache_entry){
			.model = e->n_binds ? e->binds[0].model : WD_ID_NONE,
			.component = e->n_binds ? e->binds[0].comp : WD_ID_NONE,
			.bytes = e->size,
			.idle_ns = e->last_use_ns && now > e->last_use_ns ? now - e->last_use_ns : 0,
			.pins = (uint16_t)(e->pins > UINT16_MAX ? UINT16_MAX : e->pins),
			.dtype = e->convert ? e->convert : 0xff,
			.flags = (uint8_t)((e->resident ? 0 : WD_CACHE_F_LOADING) |
					   (e->sel ? WD_CACHE_F_SUBSET : 0) |
					   (e->prefetched ? WD_CACHE_F_PREFETCHED : 0) |
					   (e->n_binds > 1 ? WD_CACHE_F_SHARED : 0) |
					   (e->n_binds && host_entry_stale(hc, e, e->binds[0].comp) ?
					    WD_CACHE_F_STALE : 0)),
			.n_tensors = e->n_t,
		};
		n++;
	}
	pthread_mutex_unlock(&hc->lock);
	*n_out = (uint16_t)n;
	return i;
}

void hostcache_io_info(struct hostcache *hc, struct wd_info *info)
{
	struct loader_io io;

	if (!hc || !hc->loader) {
		info->flags |= WD_INFO_NO_LOADER;
		return;
	}
	/* Set once by loader_create(), before any client could attach: no lock needed. */
	loader_io_path(hc->loader, &io);
	info->flags |= (io.fixed_bufs ? WD_INFO_FIXED_BUFFERS : 0) |
		       (io.fixed_files ? WD_INFO_FIXED_FILES : 0);
	info->buffers_error = io.bufs_err;
	info->files_error = io.files_err;
	info->staging_bytes = io.staging_bytes;
}

void hostcache_stats(struct hostcache *hc, uint64_t *v)
{
	struct evict_counters ec;
	uint64_t n = 0;

	pthread_mutex_lock(&hc->lock);
	evict_get_counters(hc->pol, &ec);
	for (struct entry *e = hc->entries; e; e = e->next)
		n++;
	v[WD_STAT_HOST_BYTES] = evict_used(hc->pol);
	v[WD_STAT_HOST_ENTRIES] = n;
	v[WD_STAT_HOST_HITS] = ec.hits;
	v[WD_STAT_HOST_MISSES] = ec.misses;
	v[WD_STAT_HOST_EVICTIONS] = ec.evictions;
	v[WD_STAT_HOST_EVICT_BYTES] = ec.evict_bytes;
	v[WD_STAT_HOST_PREFETCHES] = hc->prefetch_started;
	v[WD_STAT_HOST_PREFETCH_HITS] = ec.prefetch_hits;
	v[WD_STAT_HOST_LOADS] = hc->loads;
	v[WD_STAT_HOST_READ_BYTES] = hc->read_bytes;
	v[WD_STAT_HOST_COALESCED] = hc->coalesced;
	v[WD_STAT_HOST_DEDUP_BYTES] = hc->dedup_bytes;
	v[WD_STAT_HOST_REFUSED] = ec.refused;
	v[WD_STAT_HOST_FAILED] = hc->failed;
	v[WD_STAT_IO_RETRIES] = recovery_counter(RECOVERY_IO_RETRIES);
	v[WD_STAT_ALLOC_RETRIES] = recovery_counter(RECOVERY_ALLOC_RETRIES);
	v[WD_STAT_PRESSURE_SHEDS] = recovery_counter(RECOVERY_PRESSURE_SHEDS);
	v[WD_STAT_QUARANTINED] = recovery_counter(RECOVERY_QUARANTINED);
	v[WD_STAT_CUDA_BYTES] = 0;
	v[WD_STAT_HOST_BUDGET] = hc->budget;
	v[WD_STAT_HOST_READ_DIRECT_BYTES] = hc->read_direct;
	v[WD_STAT_HOST_PAGES] = arena_page_bytes(hc->arena) |
				(hc->arena->pages == ARENA_PAGES_HUGETLB ? WD_PAGES_HUGETLB :
				 hc->arena->pages == ARENA_PAGES_THP ? WD_PAGES_THP : WD_PAGES_SMALL);
	pthread_mutex_unlock(&hc->lock);
}

void hostcache_client_gone(struct hostcache *hc, struct tier_client *c)
{
	if (!hc)
		return;
	pthread_mutex_lock(&hc->lock);
	for (struct entry *e = hc->entries; e; e = e->next) {
		struct load *ld = e->ld;
		bool anyone = false;

		if (!ld || e->cancelled)
			continue;
		for (uint32_t i = 0; i < ld->n_reqs; i++) {
			if (ld->reqs[i]->q.c == c)
				ld->reqs[i]->orphan = true;
			anyone |= !ld->reqs[i]->orphan;
		}
		if (ld->had_reqs && !anyone && ld->n_reqs) {
			/* Nobody waits for it any more: stop reading (the done callback cleans up). */
			e->cancelled = true;
			log_info(MOD, "\"load cancelled, its requesters are gone\" key=\"%s\"", e->key);
			load_cancel(ld->h);
		}
	}
	pthread_mutex_unlock(&hc->lock);
}

/* The arena, the loader, the eviction policy, the quarantine, the NUMA topology and the
 * saved co-access counts. Returns 0 or the error of the part that failed. */
static int start_parts(struct hostcache *hc, const struct hostcache_config *cfg)
{
	int ret;

	hc->budget = round_extent(hostcache_fit_budget(cfg->budget));
	ret = arena_create(&(struct arena_options){ .budget = hc->budget }, &hc->arena);
	if (ret) {
		log_error(MOD, "\"cannot create the host cache arena\" bytes=%" PRIu64 " err=%d",
			  hc->budget, ret);
		return ret;
	}
	ret = loader_create(hc->arena, NULL, &hc->loader);
	if (ret) {
		log_error(MOD, "\"cannot start the loader\" err=%d", ret);
		return ret;
	}
	/* Page allocation and clearing at start, not in the first loads (uring/arena.h). */
	if (cfg->prefault && (ret = arena_prefault_start(hc->arena)))
		log_warn(MOD, "\"cannot prefault the host cache\" err=%d", ret);
	ret = evict_create(&(struct evict_options){ .budget = hc->budget,
						   .default_ttl_ns = cfg->ttl_ns },
			   &hc->pol);
	if (ret)
		return ret;
	hc->ttl_ns = cfg->ttl_ns;
	ret = quarantine_create(cfg->quarantine_after, &hc->q);
	if (ret)
		return ret;
	/* PCI discovery only finds GPUs for the NVIDIA driver; without it, skip the slow part. */
	ret = placement_open_this_system(access("/sys/bus/pci/drivers/nvidia", F_OK) == 0,
					 &hc->pl);
	if (ret)
		log_warn(MOD, "\"no topology: host cache pages follow the default NUMA policy\" "
			 "err=%d", ret);
	else
		log_info(MOD, "\"NUMA placement\" nodes=%d", placement_node_count(hc->pl));
	ret = catalog_coaccess_load(*hc->env.cat, wd_wall_ns(), host_seed_pair, hc);
	if (ret)
		log_warn(MOD, "\"co-access statistics not loaded\" err=%d", ret);
	return 0;
}

/* Probes the CUDA driver once, to say why the GPU tier refuses loads (hc->gpu_why). */
static void probe_gpu(struct hostcache *hc)
{
	struct gpu_driver drv = { 0 };
	char why[160] = "";
	int ret = gpu_driver_open(&drv, why, sizeof(why));

	if (ret) {
		if (ret == -ENODEV && !strstr(why, "no CUDA driver"))
			snprintf(hc->gpu_why, sizeof(hc->gpu_why), "no CUDA driver (%s)", why);
		else
			snprintf(hc->gpu_why, sizeof(hc->gpu_why), "%s",
				 why[0] ? why : strerror(-ret));
	} else {
		snprintf(hc->gpu_why, sizeof(hc->gpu_why), "this build loads the host tier only "
			 "(a CUDA driver is present; the GPU loader is a later issue)");
		gpu_driver_close(&drv);
	}
}

int hostcache_create(const struct tier_env *env, const struct hostcache_config *cfg,
		     struct hostcache **out)
{
	struct hostcache *hc = calloc(1, sizeof(*hc));
	int ret;

	*out = NULL;
	if (!hc)
		return -ENOMEM;
	hc->env = *env;
	pthread_mutex_init(&hc->lock, NULL);
	ret = start_parts(hc, cfg);
	if (ret) {
		hostcache_destroy(hc);
		return ret;
	}
	probe_gpu(hc);
	log_info(MOD, "\"host cache ready\" budget=%" PRIu64 " pages=%s ttl_ns=%" PRIu64
		 " verify=%d", hc->budget, arena_pages_name(hc->arena->pages), cfg->ttl_ns,
		 __atomic_load_n(hc->env.verify, __ATOMIC_RELAXED));
	*out = hc;
	return 0;
}

void hostcache_stop(struct hostcache *hc)
{
	if (!hc || !hc->loader)
		return;
	loader_destroy(hc->loader);
	hc->loader = NULL;
}

void hostcache_destroy(struct hostcache *hc)
{
	if (!hc)
		return;
	hostcache_stop(hc);
	host_save_coaccess(hc);
	while (hc->entries) {
		struct entry *e = hc->entries;

		hc->entries = e->next;
		host_free_entry(e);
	}
	evict_destroy(hc->pol);
	quarantine_destroy(hc->q);
	free(hc->cur_qfp);
	placement_close(hc->pl);
	arena_destroy(hc->arena);
	pthread_mutex_destroy(&hc->lock);
	free(hc);
}

int hostcache_client_fd(struct hostcache *hc)
{
	return arena_ro_fd(hc->arena);
}

uint64_t hostcache_size(struct hostcache *hc)
{
	return hc->arena->seg.size;
}

void hostcache_publish_metrics(struct hostcache *hc)
{
	struct wd_reg_metrics *m = registry_metrics(hc->env.reg);
	uint64_t numa[WD_METRICS_NUMA + 1] = { 0 };
	struct arena_stats st;

	if (!hc)
		return;
	pthread_mutex_lock(&hc->lock);
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident)
			numa[e->node >= 0 && e->node < (int)WD_METRICS_NUMA ?
			     (unsigned int)e->node : WD_METRICS_NUMA] += e->size;
	arena_get_stats(hc->arena, &st);
	pthread_mutex_unlock(&hc->lock);
	/* The control thread is these words' only writer: relaxed stores (shm/regmetrics.h). */
	for (unsigned int i = 0; i <= WD_METRICS_NUMA; i++)
		WRITE_ONCE(m->numa_bytes[i], numa[i]);
	WRITE_ONCE(m->host_budget, hc->budget);
	WRITE_ONCE(m->host_used, st.ext.used);
	WRITE_ONCE(m->free_bytes, st.ext.free);
	WRITE_ONCE(m->free_extents, (uint64_t)st.ext.n_free);
	WRITE_ONCE(m->largest_free, st.ext.largest_free);
	WRITE_ONCE(m->updated_wall_ns, wd_wall_ns());
}
