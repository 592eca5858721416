package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Leader tells the API where writes are committed. It must be cheap (it is
// asked per write) and must not block on the network.
type Leader interface {
	// LeaderAPI returns the base URL of the leader's API ("https://10.0.0.2:9000")
	// and whether this node is the leader. err means no leader is known; its
	// message is answered with 503, so it should say why (an election, or
	// quorum lost) and how to recover.
	LeaderAPI() (baseURL string, self bool, err error)
}

// ConsistencyChecker backs ?consistent=true reads on the leader.
type ConsistencyChecker interface {
	// VerifyLeader returns nil once this node has confirmed with a quorum
	// that it is still the leader and its applied state holds every entry
	// committed before the call (raft's VerifyLeader followed by a Barrier,
	// for instance). An error is answered with 503 and its message.
	VerifyLeader(ctx context.Context) error
}

// ForwardedByHeader marks a request one node forwarded to the leader; its
// value is the forwarding node's name. A request that carries it is never
// forwarded again, so two nodes that each think the other leads cannot
// bounce a request between them.
const ForwardedByHeader = "X-Drawbridge-Forwarded-By"

// forwardSlack is added to a forwarded request's deadline beyond the
// leader's own bounds (ApplyTimeout, a ?wait=applied timeout), so the leader
// answers before the follower gives up on it.
const forwardSlack = 5 * time.Second

// Values of drawbridge_http_forwarded_total's result label.
const (
	forwardOK       = "ok"        // the leader answered (any status)
	forwardFailed   = "error"     // the leader could not be reached
	forwardNoLeader = "no_leader" // no leader known: answered 503 here
	forwardLoop     = "loop"      // a forwarded request reached a non-leader
)

// hopHeaders are connection-level headers a proxy must not pass on
// (RFC 9110 section 7.6.1), plus those the forwarding client sets itself:
// Accept-Encoding is left to the transport, which then decodes what it
// asked for, so the answer streamed back is never silently compressed.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect", "Accept-Encoding",
	ForwardedByHeader,
}

// answerHeaders are the leader's response headers passed back to the client.
var answerHeaders = []string{
	"Content-Type", "Content-Disposition", "Retry-After", "Cache-Control",
	"X-Content-Type-Options", "WWW-Authenticate", "Allow",
}

// NewForwardClient returns the HTTP client drawbridge forwards requests to
// the leader with: bounded dial and TLS handshake, kept-alive connections,
// no proxy from the environment (peers talk on their private network) and
// no redirects. tlsConfig may be nil (plain HTTP, or the system roots).
// It sets no overall Timeout: each forwarded request carries a deadline that
// covers the leader's commit and any ?wait=applied.
func NewForwardClient(tlsConfig *tls.Config) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       tlsConfig,
			TLSHandshakeTimeout:   5 * time.Second,
			ExpectContinueTimeout: time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   32,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// writeEndpoint wraps a mutating handler: it checks ?wait=applied, and on a
// node that is not the leader forwards the request (body read within
// maxBody) instead of running h. It runs after authentication, so nothing
// unauthenticated is ever forwarded.
func (s *Server) writeEndpoint(maxBody int64, h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		wait, err := parseWait(r)
		if err != nil {
			return err
		}
		leaderURL, err := s.leaderFor(r)
		if err != nil {
			return err
		}
		if leaderURL != "" {
			s.extendWriteDeadline(w, wait)
			return s.forward(w, r, leaderURL, maxBody, wait)
		}
		if wait > 0 {
			s.extendWriteDeadline(w, wait)
			r = r.WithContext(context.WithValue(r.Context(), waitKey{}, wait))
		}
		return h(w, r)
	}
}

// readEndpoint wraps a read: served from local state, unless the client
// asks ?consistent=true, which is forwarded to the leader or, on the
// leader, served after it confirms its leadership.
func (s *Server) readEndpoint(h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		consistent, err := parseConsistent(r)
		if err != nil {
			return err
		}
		if !consistent {
			return h(w, r)
		}
		leaderURL, err := s.leaderFor(r)
		if err != nil {
			return err
		}
		if leaderURL != "" {
			s.extendWriteDeadline(w, 0)
			return s.forward(w, r, leaderURL, 0, 0)
		}
		if s.consistency != nil {
			ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ApplyTimeout)
			defer cancel()
			if err := s.consistency.VerifyLeader(ctx); err != nil {
				s.log.Warn("consistent read refused", "path", r.URL.Path, "err", err)
				return errorf(http.StatusServiceUnavailable, "cannot serve a consistent read: %v", err)
			}
		}
		return h(w, r)
	}
}

// parseConsistent reads ?consistent= (absent or false: a local read).
func parseConsistent(r *http.Request) (bool, error) {
	v := r.URL.Query().Get("consistent")
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errorf(http.StatusBadRequest, "consistent must be true or false, got %s", quoteInput(v))
	}
	return b, nil
}

// leaderFor decides where r is served: "" for this node, or the leader's
// base URL to forward to. Errors are 503s: no leader known, or a request
// that was already forwarded once and reached a node that does not lead.
func (s *Server) leaderFor(r *http.Request) (string, error) {
	if s.leader == nil {
		return "", nil
	}
	base, self, err := s.leader.LeaderAPI()
	if r.Header.Get(ForwardedByHeader) != "" {
		if err == nil && self {
			return "", nil
		}
		s.metrics.forwarded.WithLabelValues(forwardLoop).Inc()
		s.log.Warn("forwarded request reached a node that is not the leader", "method", r.Method, "path", r.URL.Path)
		return "", errorf(http.StatusServiceUnavailable, "leader changed while forwarding; retry")
	}
	switch {
	case err != nil:
		s.metrics.forwarded.WithLabelValues(forwardNoLeader).Inc()
		return "", &Error{Status: http.StatusServiceUnavailable, Message: err.Error()}
	case self:
		return "", nil
	case base == "":
		s.metrics.forwarded.WithLabelValues(forwardNoLeader).Inc()
		return "", errorf(http.StatusServiceUnavailable, "the leader's API address is not known yet; retry")
	}
	return base, nil
}

// forward sends r to the leader at base and streams its answer back: status,
// the headers in answerHeaders and the body. The caller's credentials go
// along (the leader authenticates again); ForwardedByHeader names this node.
// A request with a body is read within maxBody first, so an oversized body
// is refused here with 413, never sent on.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, base string, maxBody int64, wait time.Duration) error {
	var body []byte
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", tooLarge.Limit)
			}
			return errorf(http.StatusBadRequest, "read request body: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ApplyTimeout+wait+forwardSlack)
	defer cancel()
	target := strings.TrimSuffix(base, "/") + r.URL.RequestURI()
	req, err := http.NewRequestWithContext(ctx, r.Method, target, bytes.NewReader(body))
	if err != nil {
		s.metrics.forwarded.WithLabelValues(forwardFailed).Inc()
		return errorf(http.StatusServiceUnavailable, "the leader's API address %s is not usable: %v", quoteInput(base), err)
	}
	for k, vs := range r.Header {
		req.Header[k] = append([]string(nil), vs...)
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	req.Header.Set(ForwardedByHeader, headerSafe(s.statusSrc.Status().Node))

	// A leader that vanishes (a cut link, a dead machine) sends no reset:
	// the forward would hang until its deadline. Watch our own view of the
	// leader and give up as soon as it changes, so the caller retries on
	// the new one.
	changed := make(chan struct{})
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go s.watchLeader(base, cancel, changed, stopWatch)

	resp, err := s.client.Do(req)
	if err != nil {
		s.metrics.forwarded.WithLabelValues(forwardFailed).Inc()
		s.log.Warn("forward to leader failed", "method", r.Method, "path", r.URL.Path, "leader", base, "err", err)
		select {
		case <-changed:
			return errorf(http.StatusServiceUnavailable, "the leader at %s went away while forwarding; the change may or may not be applied; retry", base)
		default:
		}
		return errorf(http.StatusServiceUnavailable, "could not reach the leader at %s: %v; retry", base, unwrapURLError(err))
	}
	defer resp.Body.Close()
	s.metrics.forwarded.WithLabelValues(forwardOK).Inc()
	s.log.Debug("forwarded to leader", "method", r.Method, "path", r.URL.Path, "leader", base, "status", resp.StatusCode)
	for _, h := range answerHeaders {
		if vs := resp.Header.Values(h); len(vs) > 0 {
			w.Header()[h] = append([]string(nil), vs...)
		}
	}
	w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(w, resp.Body); err != nil {
		// The status is out; all that is left is to say so in the log.
		s.log.Warn("forwarded answer cut short", "method", r.Method, "path", r.URL.Path, "leader", base, "err", err)
	}
	return nil
}

// leaderWatchInterval is how often a forward in flight re-checks who leads.
const leaderWatchInterval = 100 * time.Millisecond

// watchLeader cancels a forward to base once this node sees another leader,
// or none, and closes changed to say why.
func (s *Server) watchLeader(base string, cancel context.CancelFunc, changed, stop chan struct{}) {
	t := time.NewTicker(leaderWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			now, self, err := s.leader.LeaderAPI()
			if err != nil || self || now != base {
				close(changed)
				cancel()
				return
			}
		}
	}
}

// extendWriteDeadline lets a request answer later than Config.WriteTimeout
// when it waits on the leader or for ?wait=applied. A writer that cannot
// (a test recorder) keeps its deadline.
func (s *Server) extendWriteDeadline(w http.ResponseWriter, wait time.Duration) {
	need := s.cfg.ApplyTimeout + wait + 2*forwardSlack
	if need <= s.cfg.WriteTimeout {
		return
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(need))
}

// unwrapURLError drops *url.Error's "Post \"http://…\":" prefix: the message
// already names the leader.
func unwrapURLError(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

// headerSafe keeps a node name usable as a header value.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if s == "" {
		return "unknown"
	}
	return s
}
