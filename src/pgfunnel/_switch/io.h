/* io.h: every read and write of a connection (conn.c, login.c): read(2) / send(2), or
 * through its TLS once that is up (tls.c). Inline: the path without TLS costs one test of a
 * byte already in cache. Included after switch.h by the files that do socket I/O. */
#ifndef SWITCH_IO_H
#define SWITCH_IO_H

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switch.h"

static inline ssize_t io_read(struct sw *sw, struct conn *c, uint8_t *p, size_t n)
{
    if (c->tls & TLS_UP)
        return tls_read(sw, c, p, n);
    ssize_t r;
    do
        r = read(c->fd, p, n);
    while (r < 0 && errno == EINTR);
    return r;
}

static inline ssize_t io_write(struct sw *sw, struct conn *c, const uint8_t *p, size_t n)
{
    if (c->tls & TLS_UP)
        return tls_write(sw, c, p, n);
    ssize_t r;
    do
        r = send(c->fd, p, n, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    return r;
}

#endif
