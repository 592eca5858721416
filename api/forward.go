package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
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
	// LeaderName returns the node name of the leader this node knows of
	// (its own when it leads), or "" when it knows none. It names the
	// leader in write answers (LeaderHeader).
	LeaderName() string
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

// NodeHeader and LeaderHeader name, in every answer to an authenticated
// write, the node that answered and the leader it knows of (absent when it
// knows none). A client that knows which of its members is which sends
// its next writes straight to the leader, sparing the forward (api/client
// does). They name nodes, never addresses: a client only ever follows
// them to members it was configured with.
const (
	NodeHeader   = "X-Drawbridge-Node"
	LeaderHeader = "X-Drawbridge-Leader"
)

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
	ForwardedByHeader, ClientAddrHeader,
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
// node that is not the leader validates the request (see validateHere) and
// forwards it (body read within maxBody) instead of running h. It runs
// after authentication, so nothing unauthenticated or invalid is ever
// forwarded.
func (s *Server) writeEndpoint(maxBody int64, h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		wait, err := parseWait(r)
		if err != nil {
			return err
		}
		s.nameNodes(w)
		if err := s.validateHere(w, r, maxBody, h); err != nil {
			return err
		}
		hold := s.holdUntil()
		s.extendWriteDeadline(w, wait)
		leaderURL, err := s.holdForLeader(r, hold)
		if err != nil {
			return err
		}
		if leaderURL != "" {
			err := s.forward(w, r, leaderURL, maxBody, wait, hold)
			if err == nil {
				auditOf(r.Context()).forwarded = true
			}
			return err
		}
		ctx := context.WithValue(r.Context(), holdKey{}, hold)
		if wait > 0 {
			ctx = context.WithValue(ctx, waitKey{}, wait)
		}
		return h(w, r.WithContext(ctx))
	}
}

// nameNodes sets NodeHeader and LeaderHeader on a write's answer.
func (s *Server) nameNodes(w http.ResponseWriter) {
	h := w.Header()
	self := s.selfName()
	h.Set(NodeHeader, self)
	if s.leader == nil { // a cluster of one
		h.Set(LeaderHeader, self)
	} else if l := s.leader.LeaderName(); l != "" {
		h.Set(LeaderHeader, headerSafe(l))
	}
}

// selfName returns this node's name, header-safe. It is read from the
// status source once known (building a Status per request would cost more
// than the header).
func (s *Server) selfName() string {
	if p := s.self.Load(); p != nil {
		return *p
	}
	name := s.statusSrc.Status().Node
	safe := headerSafe(name)
	if name != "" {
		s.self.Store(&safe)
	}
	return safe
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
			return s.forward(w, r, leaderURL, 0, 0, time.Time{})
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
	base, err, _ := s.whereTo(r, true)
	return base, err
}

// whereTo is leaderFor that also says whether the error is one a leader
// appearing would cure (hold: no leader known, its address not known yet,
// or a forwarded request that reached a node knowing no leader). It counts
// the outcome in the metrics when count is set.
func (s *Server) whereTo(r *http.Request, count bool) (string, error, bool) {
	if s.leader == nil {
		return "", nil, false
	}
	metric := func(v string) {
		if count {
			s.metrics.forwarded.WithLabelValues(v).Inc()
		}
	}
	base, self, err := s.leader.LeaderAPI()
	if r.Header.Get(ForwardedByHeader) != "" {
		if err == nil && self {
			return "", nil, false
		}
		metric(forwardLoop)
		if count {
			s.log.Warn("forwarded request reached a node that is not the leader", "method", r.Method, "path", r.URL.Path)
		}
		return "", &Error{Status: http.StatusServiceUnavailable, Message: "leader changed while forwarding; retry", notApplied: true}, err != nil
	}
	switch {
	case err != nil:
		metric(forwardNoLeader)
		return "", &Error{Status: http.StatusServiceUnavailable, Message: err.Error()}, true
	case self:
		return "", nil, false
	case base == "":
		metric(forwardNoLeader)
		return "", errorf(http.StatusServiceUnavailable, "the leader's API address is not known yet; retry"), true
	}
	return base, nil, false
}

// forward sends r to the leader at base and streams its answer back: status,
// the headers in answerHeaders and the body. The caller's credentials go
// along (the leader authenticates again); ForwardedByHeader names this node.
// A request with a body is read within maxBody first, so an oversized body
// is refused here with 413, never sent on.
//
// A write (hold set) whose forward provably never reached a leader — the
// connection was refused, or the node it reached answered that it does not
// lead and did not apply it — is held and sent again to the next leader
// until hold passes. One that may have reached the leader is never sent
// twice.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, base string, maxBody int64, wait time.Duration, hold time.Time) error {
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
	for {
		resp, err := s.forwardOnce(r, base, body, wait)
		switch {
		case err == nil && resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(notAppliedHeader) != "":
			// The node reached does not lead and applied nothing: wait
			// until another one does.
			if !time.Now().Before(hold) || !s.leaderChanges(r, hold, base) {
				break // answer its 503
			}
			resp.Body.Close()
			err = errRetryForward
		case errors.Is(err, errRetryForward) && time.Now().Before(hold):
			// Could not connect: the leader may be restarting, or gone.
			time.Sleep(holdPoll)
		}
		if errors.Is(err, errRetryForward) && time.Now().Before(hold) {
			s.log.Debug("forward did not reach a leader; holding the write for the next one", "path", r.URL.Path, "leader", base)
			next, lerr := s.holdForLeader(r, hold)
			if lerr != nil {
				return lerr
			}
			if next != "" {
				base = next
				continue
			}
			// This node leads now, but the body was read for forwarding:
			// the client retries (nothing was applied).
			return &Error{Status: http.StatusServiceUnavailable, Message: "this node became the leader while forwarding; nothing was applied; retry"}
		}
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				return e
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
		buf := copyBuffers.Get().(*[]byte)
		_, err = io.CopyBuffer(w, resp.Body, *buf)
		copyBuffers.Put(buf)
		if err != nil {
			// The status is out; all that is left is to say so in the log.
			s.log.Warn("forwarded answer cut short", "method", r.Method, "path", r.URL.Path, "leader", base, "err", err)
		}
		return nil
	}
}

// leaderChanges waits until this node sees a leader other than base (or
// none), and reports whether it did before hold.
func (s *Server) leaderChanges(r *http.Request, hold time.Time, base string) bool {
	t := time.NewTicker(holdPoll)
	defer t.Stop()
	for time.Now().Before(hold) {
		if now, self, err := s.leader.LeaderAPI(); err != nil || self || now != base {
			return true
		}
		select {
		case <-r.Context().Done():
			return false
		case <-t.C:
		}
	}
	return false
}

// copyBuffers hold the buffers the leader's answers are streamed back
// through: io.Copy would allocate 32 KB for every forwarded write (neither
// side offers ReadFrom or WriteTo through the wrappers), for answers that
// are a few hundred bytes.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

// errRetryForward marks a forward that never reached a leader.
var errRetryForward = errors.New("forward did not reach a leader")

// notAppliedHeader marks a 503 a node answers to a forwarded request it
// refused before applying anything (it does not lead): the forwarding
// node may send it again to the next leader.
const notAppliedHeader = "X-Drawbridge-Not-Applied"

// forwardOnce sends one forward of r (with body) to base. The response's
// body must be closed by the caller. errRetryForward (wrapped) means the
// request never left this node.
func (s *Server) forwardOnce(r *http.Request, base string, body []byte, wait time.Duration) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ApplyTimeout+s.holdTimeout()+wait+forwardSlack)
	target := strings.TrimSuffix(base, "/") + r.URL.RequestURI()
	req, err := http.NewRequestWithContext(ctx, r.Method, target, bytes.NewReader(body))
	if err != nil {
		cancel()
		s.metrics.forwarded.WithLabelValues(forwardFailed).Inc()
		return nil, errorf(http.StatusServiceUnavailable, "the leader's API address %s is not usable: %v", quoteInput(base), err)
	}
	for k, vs := range r.Header {
		req.Header[k] = append([]string(nil), vs...)
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	req.Header.Set(ForwardedByHeader, s.selfName())
	req.Header.Set(ClientAddrHeader, headerSafe(r.RemoteAddr))

	// A leader that vanishes (a cut link, a dead machine) sends no reset:
	// the forward would hang until its deadline. Watch our own view of the
	// leader and give up as soon as it changes, so the caller retries on
	// the new one.
	changed := make(chan struct{})
	stopWatch := make(chan struct{})
	go s.watchLeader(base, cancel, changed, stopWatch)

	resp, err := s.client.Do(req)
	close(stopWatch)
	if err != nil {
		cancel()
		s.metrics.forwarded.WithLabelValues(forwardFailed).Inc()
		s.log.Warn("forward to leader failed", "method", r.Method, "path", r.URL.Path, "leader", base, "err", err)
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			// Never connected: nothing was sent.
			return nil, fmt.Errorf("%w: %w", errRetryForward, err)
		}
		select {
		case <-changed:
			return nil, errorf(http.StatusServiceUnavailable, "the leader at %s went away while forwarding; the change may or may not be applied; retry", base)
		default:
		}
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose releases a forward's context when its answer is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
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
	need := s.cfg.ApplyTimeout + 2*s.holdTimeout() + wait + 2*forwardSlack
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
