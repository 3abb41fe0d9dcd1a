/*
 * The DATA round trip alone, as a floor for issue 15's CPU-per-message measure
 * (BENCHMARKS.md, "Issue 15, fifth stage"): what pipemail sends per message with one
 * connection in DATA mode (pipelined MAIL/RCPT/DATA; after the 354, the 1 KiB body, the dot
 * and the next MAIL/RCPT/DATA in one write), then one read until the replies are in.
 * No list, no rendering, no report, no checks: not an SMTP client, a measuring stick.
 *
 *   gcc -O2 -o rtt_floor scripts/rtt_floor.c
 *   /usr/sbin/smtp-sink -u nobody 127.0.0.1:2525 1000 &
 *   /usr/bin/time -f "%U %S" ./rtt_floor 2525 20000    # (user + system) / 20000 = CPU/msg
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char buf[65536];

/* Reads until `lines` reply lines (LF-terminated) have arrived. */
static void replies(int s, int lines) {
    while (lines > 0) {
        ssize_t r = read(s, buf, sizeof buf);
        if (r <= 0) {
            perror("read");
            exit(1);
        }
        for (ssize_t k = 0; k < r; k++)
            lines -= buf[k] == '\n';
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT MESSAGES\n", argv[0]);
        return 64;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]), one = 1;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        return 69;
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    char body[1024], out[4096];
    memset(body, 'x', sizeof body - 2);
    body[sizeof body - 2] = '\r';
    body[sizeof body - 1] = '\n';

    replies(s, 1); /* greeting */
    write(s, "EHLO floor.test\r\n", 17);
    char ehlo[8192];
    size_t got = 0;
    for (;;) { /* multi-line EHLO reply: up to its last line "250 " */
        ssize_t r = read(s, ehlo + got, sizeof ehlo - got - 1);
        if (r <= 0)
            return 1;
        got += r;
        ehlo[got] = 0;
        if (strstr(ehlo, "\n250 ") || !strncmp(ehlo, "250 ", 4))
            break;
    }
    int len = sprintf(out, "MAIL FROM:<a@floor.test>\r\nRCPT TO:<u0@floor.test>\r\nDATA\r\n");
    write(s, out, len);
    int expect = 3; /* 250 250 354 */
    for (int i = 0; i < n; i++) {
        replies(s, expect);
        memcpy(out, body, sizeof body);
        len = sizeof body + sprintf(out + sizeof body, ".\r\n");
        if (i + 1 < n) {
            len += sprintf(out + len, "MAIL FROM:<a@floor.test>\r\nRCPT TO:<u%d@floor.test>\r\nDATA\r\n",
                           i + 1);
            expect = 4; /* 250 (dot) 250 250 354 */
        } else {
            expect = 1;
        }
        write(s, out, len);
    }
    replies(s, expect);
    write(s, "QUIT\r\n", 6);
    return 0;
}
