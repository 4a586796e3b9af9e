/* fsutil.c - directories and atomic commits (see fsutil.h). */
#define _GNU_SOURCE
#include "fsutil.h"

#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

int mp_mkdir_p(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return mp_errorf(MP_EUSAGE, "path too long: %s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return mp_syserrorf(MP_EIO, "%s: cannot create directory", buf);
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return mp_syserrorf(MP_EIO, "%s: cannot create directory", buf);
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return mp_errorf(MP_EIO, "%s: exists and is not a directory", buf);
    return 0;
}

static int fsync_path(const char *path, int dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return mp_syserrorf(MP_EIO, "%s: cannot open for fsync", path);
    int r = fsync(fd);
    close(fd);
    if (r != 0 && !(dir && (errno == EINVAL || errno == EROFS)))
        return mp_syserrorf(MP_EIO, "%s: fsync failed", path);
    return 0;
}

int mp_commit_file(const char *tmp, const char *final)
{
    MP_CHECK(fsync_path(tmp, 0));
    if (rename(tmp, final) != 0)
        return mp_syserrorf(MP_EIO, "cannot rename %s to %s", tmp, final);
    char d[4096];
    snprintf(d, sizeof d, "%s", final);
    MP_CHECK(fsync_path(dirname(d), 1));
    return 0;
}

int mp_fwrite_all(const void *p, size_t n, void *fp, const char *path)
{
    if (n && fwrite(p, 1, n, (FILE *)fp) != n)
        return mp_syserrorf(MP_EIO, "%s: write failed", path);
    return 0;
}

int mp_write_file_atomic(const char *path, const void *data, size_t n)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *fp = fopen(tmp, "wb");
    if (!fp)
        return mp_syserrorf(MP_EIO, "%s: cannot create", tmp);
    int rc = mp_fwrite_all(data, n, fp, tmp);
    if (fclose(fp) != 0 && rc == 0)
        rc = mp_syserrorf(MP_EIO, "%s: write failed", tmp);
    if (rc == 0)
        rc = mp_commit_file(tmp, path);
    if (rc < 0) {
        unlink(tmp);
        MP_CHECK(rc);
    }
    return 0;
}

int mp_read_file(const char *path, char **out, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return mp_syserrorf(errno == ENOENT ? MP_ENOENT : MP_EIO, "%s: cannot open", path);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    if (len < 0) {
        fclose(fp);
        return mp_syserrorf(MP_EIO, "%s: cannot determine size", path);
    }
    char *buf = malloc((size_t)len + 1);
    if (!buf) {
        fclose(fp);
        return mp_errorf(MP_ENOMEM, "out of memory reading %s", path);
    }
    size_t got = fread(buf, 1, (size_t)len, fp);
    fclose(fp);
    buf[got] = '\0';
    *out = buf;
    if (n)
        *n = got;
    return 0;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p) == 0 || errno == ENOENT ? 0 : -1;
}

int mp_remove_tree(const char *path)
{
    if (access(path, F_OK) != 0)
        return 0;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return mp_syserrorf(MP_EIO, "%s: cannot remove", path);
    return 0;
}

int mp_reserve_space(const char *path, long long bytes, const char *what)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return mp_syserrorf(MP_EIO, "%s: cannot open to reserve space", path);
    int r = bytes > 0 ? fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes) : 0;
    int e = errno;
    close(fd);
    if (r != 0 && (e == EOPNOTSUPP || e == ENOSYS))
        return 0;
    if (r != 0) {
        errno = e;
        return mp_syserrorf(MP_EIO, "%s: cannot reserve %lld bytes", what, bytes);
    }
    return 0;
}

int mp_release_space(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || truncate(path, st.st_size) != 0)
        return mp_syserrorf(MP_EIO, "%s: cannot release the reserved space", path);
    return 0;
}
