package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
)

// response is what the client keeps of a response it read in full.
type response struct {
	code   int
	status string // the status line after the protocol, such as "200 OK"
	close  bool   // the server will close the connection after it
}

// errMalformed marks a response that is not HTTP/1.x as this client reads it.
var errMalformed = errors.New("malformed response")

// readResponse reads one response, body included, from br. Informational
// (1xx) responses before it are skipped.
func readResponse(br *bufio.Reader) (response, error) {
	tp := textproto.NewReader(br)
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return response{}, fmt.Errorf("read status line: %w", err)
		}
		proto, status, _ := strings.Cut(line, " ")
		code, err := strconv.Atoi(status[:min(3, len(status))])
		if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
			return response{}, fmt.Errorf("%w: status line %q", errMalformed, line)
		}
		hdr, err := tp.ReadMIMEHeader()
		if err != nil {
			return response{}, fmt.Errorf("read headers of %q: %w", status, eofIsUnexpected(err))
		}
		if code == 101 {
			return response{}, fmt.Errorf("%w: %q to a GET", errMalformed, status)
		}
		if code < 200 {
			continue
		}
		r := response{code: code, status: status}
		conn := strings.ToLower(strings.Join(hdr.Values("Connection"), ","))
		r.close = hasToken(conn, "close") || proto == "HTTP/1.0" && !hasToken(conn, "keep-alive")
		if err := readBody(tp, br, code, hdr, &r); err != nil {
			return response{}, fmt.Errorf("read body of %q: %w", status, err)
		}
		return r, nil
	}
}

// readBody reads and discards the body that hdr announces. A body with no
// length runs to the close, so it sets r.close.
func readBody(tp *textproto.Reader, br *bufio.Reader, code int, hdr textproto.MIMEHeader, r *response) error {
	te := strings.ToLower(strings.Join(hdr.Values("Transfer-Encoding"), ","))
	switch {
	case code == 204 || code == 304:
		return nil
	case te != "":
		if !strings.HasSuffix(strings.TrimSpace(te), "chunked") {
			r.close = true
			_, err := io.Copy(io.Discard, br)
			return err
		}
		return readChunked(tp, br)
	case hdr.Get("Content-Length") != "":
		n, err := strconv.ParseInt(hdr.Get("Content-Length"), 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("%w: Content-Length %q", errMalformed, hdr.Get("Content-Length"))
		}
		_, err = io.CopyN(io.Discard, br, n)
		return eofIsUnexpected(err)
	default:
		r.close = true
		_, err := io.Copy(io.Discard, br)
		return err
	}
}

// readChunked reads a chunked body and its trailers.
func readChunked(tp *textproto.Reader, br *bufio.Reader) error {
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return eofIsUnexpected(err)
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("%w: chunk size %q", errMalformed, line)
		}
		if n == 0 {
			_, err := tp.ReadMIMEHeader()
			return eofIsUnexpected(err)
		}
		if _, err := io.CopyN(io.Discard, br, n); err != nil {
			return eofIsUnexpected(err)
		}
		if line, err := tp.ReadLine(); err != nil || line != "" {
			return errors.Join(fmt.Errorf("%w: no CRLF after a chunk", errMalformed), eofIsUnexpected(err))
		}
	}
}

// hasToken reports whether the comma-separated list s holds token.
func hasToken(s, token string) bool {
	for t := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(t) == token {
			return true
		}
	}
	return false
}

// eofIsUnexpected turns io.EOF into io.ErrUnexpectedEOF: in the middle of a
// response, the end of the stream is never a clean end.
func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// classify returns the Kind of a failed request's error.
func classify(err error) Kind {
	var ne net.Error
	switch {
	case isRefused(err):
		return Refused
	case isReset(err):
		return Reset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return EOF
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return Timeout
	}
	return Other
}
