/* fsutil.c - directories and atomic commits (see fsutil.h). */
#define _GNU_SOURCE
#include "fsutil.h"

#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

int mp_open_direct(const char *path, int create, int *fd, int *direct)
{
    const int flags = O_WRONLY | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0);
    *direct = 1;
    *fd = open(path, flags | O_DIRECT, 0666);
    if (*fd < 0 && errno == EINVAL) { /* a file system without O_DIRECT (tmpfs before Linux 6.6) */
        *direct = 0;
        *fd = open(path, flags, 0666);
    }
    if (*fd < 0)
        return mp_syserrorf(MP_EIO, create ? "%s: cannot create" : "%s: cannot open", path);
    return 0;
}

int mp_pwrite_all(int fd, const void *p, size_t n, long long off, int *direct, const char *path)
{
    if (*direct && (((uintptr_t)p | n | (unsigned long long)off) & (MP_DIRECT_ALIGN - 1)))
        return mp_errorf(MP_EINTERNAL, "%s: unaligned direct write of %zu bytes at %lld", path, n, off);
    const char *c = p;
    while (n) {
        ssize_t w = pwrite(fd, c, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EINVAL && *direct) { /* took the flag, not the write: buffered from here */
            int fl = fcntl(fd, F_GETFL);
            if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_DIRECT) < 0)
                return mp_syserrorf(MP_EIO, "%s: write failed", path);
            *direct = 0;
            continue;
        }
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return mp_syserrorf(MP_EIO, "%s: write failed", path);
        }
        c += w, n -= (size_t)w, off += w;
    }
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

const char *mp_file_kind(unsigned mode)
{
    if (S_ISREG(mode))
        return "a regular file";
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISSOCK(mode))
        return "a socket";
    return "not a regular file";
}

int mp_open_regular(const char *path, int not_regular_code, int *fd_out, size_t *size)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return mp_syserrorf(errno == ENOENT || errno == ENOTDIR ? MP_ENOENT : MP_EIO, "%s: cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return mp_syserrorf(MP_EIO, "%s: cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mp_errorf(not_regular_code, "%s: is %s, not a regular file", path, mp_file_kind(st.st_mode));
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)SIZE_MAX / 2) {
        close(fd);
        return mp_errorf(MP_EFORMAT, "%s: unusable file size %lld", path, (long long)st.st_size);
    }
    *fd_out = fd;
    *size = (size_t)st.st_size;
    return 0;
}

int mp_read_file_max(const char *path, size_t max, int not_regular_code, char **out, size_t *n)
{
    *out = NULL;
    int fd;
    size_t len;
    MP_CHECK(mp_open_regular(path, not_regular_code, &fd, &len));
    if (len > max) {
        close(fd);
        return mp_errorf(not_regular_code, "%s: %zu bytes, more than the %zu bytes such a file may have", path, len,
                         max);
    }
    char *buf = malloc(len + 1);
    if (!buf) {
        close(fd);
        return mp_errorf(MP_ENOMEM, "out of memory reading %s (%zu bytes)", path, len);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            close(fd);
            return mp_syserrorf(MP_EIO, "%s: read failed", path);
        }
        if (r == 0)
            break; /* the file shrank while we read it: take what is there */
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    if (n)
        *n = got;
    return 0;
}

int mp_read_file(const char *path, char **out, size_t *n)
{
    return mp_read_file_max(path, SIZE_MAX / 2, MP_EFORMAT, out, n);
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

int mp_map_scratch(const char *dir, const char *what, size_t bytes, void **out)
{
    char path[4400];
    *out = NULL;
    snprintf(path, sizeof path, "%s/.scratch-%d-XXXXXX", dir, (int)getpid());
    int fd = mkstemp(path);
    if (fd < 0)
        return mp_syserrorf(MP_EIO, "%s: cannot create the file of %s", path, what);
    unlink(path);
    int e = posix_fallocate(fd, 0, (off_t)bytes);
    void *p = e == 0 ? mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd); /* the mapping keeps the file */
    if (e != 0)
        return mp_errorf(MP_EIO, "%s: cannot allocate %zu bytes for %s: %s", path, bytes, what, strerror(e));
    if (p == MAP_FAILED)
        return mp_syserrorf(MP_EIO, "%s: cannot map %s", path, what);
    *out = p;
    return 0;
}

void mp_pages_drop(const void *p, size_t bytes)
{
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + pg - 1) / pg * pg,
              b = ((uintptr_t)p + bytes) / pg * pg;
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}
