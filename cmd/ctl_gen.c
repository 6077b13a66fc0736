/* weightctl gen: writes synthetic models (core/format/gen.h) for tests, demos and benchmarks. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/ctl.h"
#include "core/format/gen.h"

#define MODELS_LISTED 10

struct gen_ui {
	struct ctl_progress progress;
	uint32_t models;
};

static void usage(FILE *out)
{
	const char *summary;
	const char *name;

	fprintf(out,
		"usage: weightctl gen --preset NAME [--size BYTES] [--count N] [--seed S]\n"
		"                     [--dtype F16|BF16|F32] [--shards N] DIR\n\n"
		"Writes synthetic safetensors models with real tensor names and layouts and\n"
		"deterministic data: the same options always give byte-identical files.\n\n"
		"  --preset NAME  what to write (below)\n"
		"  --size BYTES   target tensor bytes in all, with a K/M/G/T suffix (binary);\n"
		"                 default 4M per model, 512 bytes per file for 'files'\n"
		"  --count N      number of files for 'files' (default 10000)\n"
		"  --seed S       data seed (default 0)\n"
		"  --dtype D      F16 (default), BF16 or F32\n"
		"  --shards N     LLaMA shard count (default 2)\n\n"
		"Presets:\n");
	for (size_t i = 0; (name = gen_preset_name(i, &summary)); i++)
		fprintf(out, "  %-7s %s\n", name, summary);
}

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct gen_ui *ui = arg;

	ctl_progress_update(&ui->progress, done, total);
}

static void on_model(void *arg, const char *name, const char *path, uint32_t files,
		     uint64_t bytes)
{
	struct gen_ui *ui = arg;
	char h[32];

	if (ui->models++ < MODELS_LISTED)
		printf("model %-24s %3u files  %10s  %s\n", name, files,
		       ctl_human_bytes(bytes, h, sizeof(h)), path);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	*out = strtoull(s, &end, 0);
	return errno || *end ? -EINVAL : 0;
}

int ctl_gen(struct ctl *c, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "preset", required_argument, NULL, 'p' },
		{ "size", required_argument, NULL, 's' },
		{ "count", required_argument, NULL, 'n' },
		{ "seed", required_argument, NULL, 'S' },
		{ "dtype", required_argument, NULL, 'd' },
		{ "shards", required_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct gen_report rep = { 0 };
	struct gen_ui ui = { 0 };
	struct gen_options opt = { .progress = on_progress, .on_model = on_model, .arg = &ui,
				   .report = &rep };
	const char *preset = NULL;
	uint64_t v;
	char h1[32], h2[32];
	int o, rc;

	(void)c;
	optind = 1;
	while ((o = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (o) {
		case 'p':
			preset = optarg;
			break;
		case 's':
			if (gen_parse_size(optarg, &opt.size)) {
				ctl_err("gen", "invalid --size '%s' (e.g. 4096, 64M, 1G)", optarg);
				return CTL_USAGE;
			}
			break;
		case 'n':
		case 'k':
			if (parse_u64(optarg, &v) || v == 0 || v > 10000000) {
				ctl_err("gen", "invalid --%s '%s' (1 to 10000000)",
					o == 'n' ? "count" : "shards", optarg);
				return CTL_USAGE;
			}
			if (o == 'n')
				opt.count = (uint32_t)v;
			else
				opt.shards = (uint32_t)v;
			break;
		case 'S':
			if (parse_u64(optarg, &opt.seed)) {
				ctl_err("gen", "invalid --seed '%s'", optarg);
				return CTL_USAGE;
			}
			break;
		case 'd':
			if (!strcmp(optarg, "F16"))
				opt.dtype = ST_F16;
			else if (!strcmp(optarg, "BF16"))
				opt.dtype = ST_BF16;
			else if (!strcmp(optarg, "F32"))
				opt.dtype = ST_F32;
			else {
				ctl_err("gen", "invalid --dtype '%s' (F16, BF16 or F32)", optarg);
				return CTL_USAGE;
			}
			break;
		case 'h':
			usage(stdout);
			return CTL_OK;
		default:
			usage(stderr);
			return CTL_USAGE;
		}
	}
	if (!preset || optind != argc - 1) {
		ctl_err("gen", "%s", !preset ? "--preset is required" : "expected one DIR");
		usage(stderr);
		return CTL_USAGE;
	}
	for (size_t i = 0;; i++) {
		const char *name = gen_preset_name(i, NULL);

		if (!name) {
			ctl_err("gen", "unknown preset '%s'", preset);
			usage(stderr);
			return CTL_USAGE;
		}
		if (!strcmp(name, preset))
			break;
	}
	ctl_progress_begin(&ui.progress, "gen", true);
	rc = gen_preset(preset, argv[optind], &opt);
	ctl_progress_end(&ui.progress, rep.tensor_bytes, rep.tensor_bytes);
	if (ui.models > MODELS_LISTED)
		printf("... and %u more models\n", ui.models - MODELS_LISTED);
	printf("wrote %u models, %u files (%u safetensors), %s (%s of tensor data) in %s\n",
	       rep.models, rep.files, rep.st_files, ctl_human_bytes(rep.bytes, h1, sizeof(h1)),
	       ctl_human_bytes(rep.tensor_bytes, h2, sizeof(h2)), argv[optind]);
	if (rc) {
		ctl_err("gen", "writing %s failed: %s", argv[optind], strerror(-rc));
		return CTL_FAIL;
	}
	return CTL_OK;
}
