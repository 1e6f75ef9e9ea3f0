package loadgen

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadResponse_Framing: every way HTTP/1.1 frames a body is read to its
// end, and the bytes after it (the next response) are left unread.
func TestReadResponse_Framing(t *testing.T) {
	const next = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
	for _, tc := range []struct {
		name, in string
		code     int
		close    bool
		rest     string // what is left unread
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + next, 200, false, next},
		{"chunked with trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nT: v\r\n\r\n" + next, 200, false, next},
		{"connection close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, true, ""},
		{"close token in a list", "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n", 200, true, ""},
		{"to the close", "HTTP/1.1 200 OK\r\n\r\nall of it", 200, true, ""},
		{"204 has no body", "HTTP/1.1 204 No Content\r\n\r\n" + next, 204, false, next},
		{"1xx skipped", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 1\r\n\r\nx", 503, false, ""},
		{"HTTP/1.0 closes", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, true, ""},
		{"HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", 200, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			r, err := readResponse(br)
			require.NoError(t, err)
			assert.Equal(t, tc.code, r.code)
			assert.Equal(t, tc.close, r.close)
			rest, _ := io.ReadAll(br)
			assert.Equal(t, tc.rest, string(rest))
		})
	}
}

// TestReadResponse_Broken: a response cut short is an EOF failure, one that
// is not HTTP/1.x is Other.
func TestReadResponse_Broken(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		kind     Kind
	}{
		{"nothing", "", EOF},
		{"status line only", "HTTP/1.1 200 OK\r\n", EOF},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", EOF},
		{"short chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe", EOF},
		{"no last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", EOF},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", Other},
		{"no status code", "HTTP/1.1 OK\r\n\r\n", Other},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", Other},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Other},
		{"switching protocols", "HTTP/1.1 101 Switching Protocols\r\n\r\n", Other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readResponse(bufio.NewReader(strings.NewReader(tc.in)))
			require.Error(t, err)
			assert.Equal(t, tc.kind, classify(err), "%v", err)
			if tc.kind == Other {
				assert.True(t, errors.Is(err, errMalformed), "%v", err)
			}
		})
	}
}

// TestStart_InvalidConfig: a Config that cannot work is an error, and
// nothing starts.
func TestStart_InvalidConfig(t *testing.T) {
	for _, c := range []Config{
		{Network: "udp", Addr: "127.0.0.1:1"},
		{Network: "tcp", Addr: "127.0.0.1:1", Source: "localhost"},
		{Network: "unix", Addr: "/nonexistent", Source: "127.0.0.2"},
		{Network: "tcp", Addr: "127.0.0.1:1", Mode: 7},
		{Network: "tcp", Addr: "127.0.0.1:1", Clients: -1},
		{Network: "tcp", Addr: "127.0.0.1:1", Path: "no-slash"},
		{Network: "tcp", Addr: "127.0.0.1:1", Path: "/a b"},
		{Network: "tcp", Addr: "127.0.0.1:1", Source: "127.0.0.2", Dial: (&net.Dialer{}).DialContext},
	} {
		l, err := Start(t.Context(), c)
		assert.Error(t, err, "%+v", c)
		assert.Nil(t, l)
	}
}

func TestResult_String(t *testing.T) {
	r := Result{OK: 10, Closed: 2, Conns: 3,
		Failed: map[Kind]int64{EOF: 2, Refused: 1},
		First:  map[Kind]string{EOF: "read status line: EOF", Refused: "dial: refused"}}
	assert.Equal(t, int64(3), r.Failures())
	assert.Equal(t, "10 ok, 2 told to close, 3 connections, 3 failed: refused 1 (first: dial: refused), eof 2 (first: read status line: EOF)", r.String())
	assert.Equal(t, "0 ok, 0 told to close, 0 connections, 0 failed", Result{}.String())
}
