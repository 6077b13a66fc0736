/* weightctl validate: one result per safetensors file, optionally reading all data. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/ctl.h"
#include "core/base/file.h"
#include "core/format/st.h"

struct vopts {
	bool json;
	bool deep;
	unsigned n_files;
	unsigned n_invalid;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl validate [--json] [--deep] PATH...\n\n"
		"Validates each safetensors file against every rule of the format. A directory\n"
		"PATH is searched recursively for *.safetensors files.\n\n"
		"  --json   one JSON object per line per file: {\"file\", \"valid\", \"error\":\n"
		"           {\"code\", \"message\"}} (error only when invalid)\n"
		"  --deep   also read all tensor data: an xxh3-64 checksum per tensor and the\n"
		"           count of NaN and Inf values in float tensors\n\n"
		"Exit status: 0 all files valid, 1 any file invalid or unreadable, 2 usage error.\n");
}

static void report(struct vopts *o, const char *path, const struct st_file *f,
		   const struct st_error *err, const struct st_deep_tensor *deep)
{
	bool valid = err == NULL;

	o->n_files++;
	o->n_invalid += !valid;
	if (o->json) {
		json_t *j = json_pack("{s:s, s:b}", "file", path, "valid", valid);

		if (!valid) {
			json_object_set_new(j, "error",
					    json_pack("{s:s, s:s, s:I}", "code",
						      st_code_name(err->code), "message",
						      err->message, "number", (json_int_t)err->code));
			if (err->tensor[0])
				json_object_set_new(json_object_get(j, "error"), "tensor",
						    json_string(err->tensor));
			if (err->offset != UINT64_MAX)
				json_object_set_new(json_object_get(j, "error"), "offset",
						    json_integer((json_int_t)err->offset));
		} else {
			json_object_set_new(j, "tensors", json_integer(f->n_tensors));
			json_object_set_new(j, "data_bytes",
					    json_integer((json_int_t)st_data_bytes(f)));
		}
		if (valid && deep) {
			json_t *arr = json_array();
			uint64_t nan = 0, inf = 0;

			for (uint32_t i = 0; i < f->n_tensors; i++) {
				char hex[17];

				snprintf(hex, sizeof(hex), "%016llx",
					 (unsigned long long)deep[i].xxh3);
				json_array_append_new(
					arr, json_pack("{s:s, s:s, s:I, s:I}", "name",
						       f->tensors[i].name, "xxh3", hex, "nan",
						       (json_int_t)deep[i].nan, "inf",
						       (json_int_t)deep[i].inf));
				nan += deep[i].nan;
				inf += deep[i].inf;
			}
			json_object_set_new(j, "nan", json_integer((json_int_t)nan));
			json_object_set_new(j, "inf", json_integer((json_int_t)inf));
			json_object_set_new(j, "checksums", arr);
		}
		ctl_print_json(j);
		return;
	}
	if (!valid) {
		printf("INVALID %s\n        %s\n", path, err->message);
		return;
	}
	char bytes[32];

	printf("OK      %s  (%u tensors, %s)\n", path, f->n_tensors,
	       ctl_human_bytes(st_data_bytes(f), bytes, sizeof(bytes)));
	if (deep) {
		uint64_t nan = 0, inf = 0;

		for (uint32_t i = 0; i < f->n_tensors; i++) {
			nan += deep[i].nan;
			inf += deep[i].inf;
			if (deep[i].nan || deep[i].inf)
				printf("        %s: %llu NaN, %llu Inf\n", f->tensors[i].name,
				       (unsigned long long)deep[i].nan,
				       (unsigned long long)deep[i].inf);
		}
		printf("        deep: all data read, %llu NaN, %llu Inf\n",
		       (unsigned long long)nan, (unsigned long long)inf);
	}
}

static void deep_progress(uint64_t done, uint64_t total, void *arg)
{
	ctl_progress_update(arg, done, total);
}

static void validate_file(struct vopts *o, const char *path)
{
	struct st_file f = { 0 };
	struct st_error err = { 0 };
	struct st_deep_tensor *deep = NULL;
	struct stat sb;
	int fd = wd_open_regular(AT_FDCWD, path, 0, &sb);

	if (fd < 0) {
		err.code = ST_ERR_IO;
		err.offset = UINT64_MAX;
		snprintf(err.message, sizeof(err.message), "%s: io: %s%s", path,
			 fd == -EINVAL ? "not a regular file: " : "cannot open: ",
			 fd == -EINVAL ? wd_file_kind(sb.st_mode) : strerror(-fd));
		report(o, path, NULL, &err, NULL);
		return;
	}
	if (st_open_fd(fd, path, &f, &err) < 0) {
		report(o, path, NULL, &err, NULL);
		close(fd);
		return;
	}
	if (o->deep) {
		deep = calloc(f.n_tensors ? f.n_tensors : 1, sizeof(*deep));
		if (!deep) {
			err.code = ST_ERR_NOMEM;
			err.offset = UINT64_MAX;
			snprintf(err.message, sizeof(err.message), "%s: nomem: %u tensors", path,
				 f.n_tensors);
		} else {
			struct ctl_progress prog;
			int rc;

			ctl_progress_begin(&prog, path, true);
			rc = st_deep_check_progress(fd, &f, deep, &err, deep_progress, &prog);
			ctl_progress_end(&prog, st_data_bytes(&f), st_data_bytes(&f));
			if (rc == 0) {
				report(o, path, &f, NULL, deep);
				goto out;
			}
		}
		report(o, path, NULL, &err, NULL);
		goto out;
	}
	report(o, path, &f, NULL, NULL);
out:
	free(deep);
	st_file_free(&f);
	close(fd);
}

static bool has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

/* Walks @dir in name order so output is stable; depth bounds symlink loops. */
static void validate_dir(struct vopts *o, const char *dir, int depth)
{
	struct dirent **ents = NULL;
	int n;

	if (depth > 64) {
		fprintf(stderr, "weightctl validate: %s: too deep (symlink loop?), skipped\n", dir);
		return;
	}
	n = scandir(dir, &ents, NULL, alphasort);
	if (n < 0) {
		fprintf(stderr, "weightctl validate: %s: %s, skipped\n", dir, strerror(errno));
		return;
	}
	for (int i = 0; i < n; i++) {
		const char *name = ents[i]->d_name;
		char path[4096];
		struct stat st;

		if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
			goto next;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
			goto next;
		if (stat(path, &st) < 0)
			goto next;
		if (S_ISDIR(st.st_mode))
			validate_dir(o, path, depth + 1);
		else if (S_ISREG(st.st_mode) && has_suffix(name, ".safetensors"))
			validate_file(o, path);
next:
		free(ents[i]);
	}
	free(ents);
}

int ctl_validate(struct ctl *c, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "deep", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct vopts o = { 0 };
	int opt;

	(void)c;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "jdh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': o.json = true; break;
		case 'd': o.deep = true; break;
		case 'h': usage(stdout); return CTL_OK;
		default: usage(stderr); return CTL_USAGE;
		}
	}
	if (optind >= argc) {
		ctl_err("validate", "no PATH given");
		usage(stderr);
		return CTL_USAGE;
	}
	for (int i = optind; i < argc; i++) {
		struct stat st;

		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
			validate_dir(&o, argv[i], 0);
		else
			validate_file(&o, argv[i]);
	}
	if (!o.json)
		printf("%u file(s), %u invalid\n", o.n_files, o.n_invalid);
	return o.n_invalid ? CTL_FAIL : CTL_OK;
}
