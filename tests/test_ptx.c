/*
 * The CUDA conversion kernels (PTX text inside gpu/cuda_dev.c) assembled offline by ptxas,
 * for the oldest and the newest architecture this toolkit's ptxas knows of that weightd
 * supports (sm_75, sm_90). The driver JIT-compiles the same text on a real GPU; this check
 * catches a syntax or typing error on a machine without one. SKIP (77) when the build has
 * no CUDA headers or no ptxas is found ($PTXAS, else PATH, else $CUDA_HOME/bin).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gpu/device.h"

static const char *find_ptxas(char *buf, size_t size)
{
	const char *env = getenv("PTXAS"), *home = getenv("CUDA_HOME");
	const char *path = getenv("PATH");

	if (env && *env)
		return access(env, X_OK) == 0 ? env : NULL;
	while (path && *path) {
		size_t n = strcspn(path, ":");

		snprintf(buf, size, "%.*s/ptxas", (int)n, path);
		if (n && access(buf, X_OK) == 0)
			return buf;
		path += n + (path[n] == ':');
	}
	snprintf(buf, size, "%s/bin/ptxas", home && *home ? home : "/usr/local/cuda");
	return access(buf, X_OK) == 0 ? buf : NULL;
}

int main(void)
{
	static const char *const archs[] = { "sm_75", "sm_90" };
	const char *ptx = gpu_cuda_convert_ptx(), *ptxas;
	char ptxas_buf[4096], dir[] = "/tmp/wd-ptx.XXXXXX", src[64], out[64];
	int failed = 0;
	FILE *f;

	if (!ptx) {
		printf("SKIP: this build has no CUDA device (configure found no CUDA headers)\n");
		return 77;
	}
	ptxas = find_ptxas(ptxas_buf, sizeof(ptxas_buf));
	if (!ptxas) {
		printf("SKIP: no ptxas ($PTXAS, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)\n");
		return 77;
	}
	if (!mkdtemp(dir)) {
		printf("FAIL: mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	snprintf(src, sizeof(src), "%s/convert.ptx", dir);
	snprintf(out, sizeof(out), "%s/convert.cubin", dir);
	f = fopen(src, "w");
	if (!f || fputs(ptx, f) == EOF || fclose(f)) {
		printf("FAIL: writing %s: %s\n", src, strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++) {
		char arch[32];
		pid_t pid;
		int st;

		snprintf(arch, sizeof(arch), "-arch=%s", archs[i]);
		pid = fork();
		if (pid == 0) {
			execl(ptxas, ptxas, arch, "-o", out, src, (char *)NULL);
			_exit(127);
		}
		if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
		    WEXITSTATUS(st) != 0) {
			printf("FAIL: %s %s %s: status %#x\n", ptxas, arch, src, pid < 0 ? -1 : st);
			failed = 1;
			continue;
		}
		printf("PASS: %s %s\n", ptxas, arch);
	}
	unlink(src);
	unlink(out);
	rmdir(dir);
	return failed;
}
