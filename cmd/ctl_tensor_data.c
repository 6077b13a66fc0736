/*
 * weightctl tensor-data: a resident tensor's bytes on stdout, from the host cache
 * (weightd_tensor_data()) or read back from a GPU (weightd_device_read()). `weightctl cat`
 * is its deprecated name.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "weightd.h"

#include "cmd/ctl.h"

#define VERB "tensor-data"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl tensor-data [--socket PATH] [--component NAME]\n"
		"                             [--tier host|cuda:N] MODEL TENSOR\n\n"
		"Writes the raw bytes of TENSOR, as the shared host cache holds them (not read\n"
		"from the file), to stdout. The tensor must be resident: `weightctl load MODEL`\n"
		"first. A converted load (--dtype) shows the converted bytes. With --tier cuda:N\n"
		"the bytes are read back from that GPU's copy (the command maps the component's\n"
		"VRAM allocation, as a client would, and copies device to host).\n\n"
		"The C call is weightd_tensor_data() (weightd_device_read() for a GPU).\n"
		"`weightctl cat` is the deprecated name of this verb.\n\n"
		"Exit status: 0, 1 not resident, unknown or failed, 2 usage error.\n");
}

/* --tier cuda:N: maps the tensor's component on that GPU and copies it back. */
static int from_device(struct weightd *w, const char *model, const struct ctl_dopts *o,
		      const struct weightd_tensor_info *ti)
{
	struct weightd_component_info ci;
	struct weightd_device_map *m;
	char *buf = NULL;
	int ret;

	ret = weightd_component(w, ti->component, &ci);
	if (!ret)
		ret = weightd_device_map_opts(w, model, ci.name[0] ? ci.name : NULL, o->tier - 1,
					      NULL, &m);
	if (ret)
		return ctl_failed(VERB, o, ret);
	buf = malloc(ti->nbytes ? ti->nbytes : 1);
	ret = buf ? weightd_device_read(m, ti, buf, ti->nbytes) : -ENOMEM;
	if (ret) {
		ctl_err(VERB, "%s", ret == -ENOMEM ? "out of memory" : weightd_last_error());
		ret = CTL_FAIL;
	} else if (ti->nbytes && fwrite(buf, 1, ti->nbytes, stdout) != ti->nbytes) {
		ctl_err(VERB, "writing to stdout: %s", strerror(errno));
		ret = CTL_FAIL;
	} else {
		ret = fflush(stdout) ? CTL_FAIL : CTL_OK;
	}
	free(buf);
	weightd_device_unmap(w, m);
	return ret;
}

int ctl_tensor_data(struct ctl *c, int argc, char **argv)
{
	struct weightd_tensor_info ti;
	struct ctl_dopts o;
	struct weightd *w;
	const char *model, *tensor;
	const char *p;
	size_t done = 0;
	int ret;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "component tier", usage)) >= 0)
		return ret;
	if (optind + 2 != argc) {
		ctl_err(VERB, "wants MODEL and TENSOR");
		usage(stderr);
		return CTL_USAGE;
	}
	model = argv[optind];
	tensor = argv[optind + 1];
	w = ctl_open_daemon(VERB, &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_tensor(w, model, o.component, tensor, &ti);
	if (ret) {
		ret = ctl_failed(VERB, &o, ret);
		goto out;
	}
	if (o.tier != WEIGHTD_TIER_HOST) {
		ret = from_device(w, model, &o, &ti);
		goto out;
	}
	p = weightd_tensor_data(w, &ti);
	if (!p) {
		if (errno == ENODATA)
			ctl_err(VERB, "%s: tensor %s is not resident in the host cache; run "
				"`weightctl load %s%s%s` first", model, tensor, model,
				o.component ? " --component " : "", o.component ? o.component : "");
		else
			ctl_err(VERB, "%s", weightd_last_error());
		ret = CTL_FAIL;
		goto out;
	}
	while (done < ti.nbytes) {
		size_t n = fwrite(p + done, 1, ti.nbytes - done, stdout);

		if (!n) {
			ctl_err(VERB, "writing to stdout: %s", strerror(errno));
			ret = CTL_FAIL;
			goto out;
		}
		done += n;
	}
	ret = fflush(stdout) ? CTL_FAIL : CTL_OK;
out:
	weightd_detach(w);
	return ret;
}

/* The verb's old name: still works, and says on stderr that it is deprecated. */
int ctl_cat(struct ctl *c, int argc, char **argv)
{
	fprintf(stderr, "weightctl: 'cat' is deprecated, use 'tensor-data' (docs/names.md)\n");
	return ctl_tensor_data(c, argc, argv);
}
