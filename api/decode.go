package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// decodeOptions tune decodeBody.
type decodeOptions struct {
	// allowUnknown accepts fields the target does not have. Only the recipe's
	// hook does: adnanh/webhook ignored extra payload keys.
	allowUnknown bool
}

// decodeBody reads exactly one JSON value from the request body into v, within
// the configured size limit. Errors are *Error: 413 for an oversized body,
// 400 with a readable message for anything else.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any, opt decodeOptions) error {
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	if !opt.allowUnknown {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return s.bodyError(err)
	}
	// Exactly one value: trailing junk is refused rather than ignored.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return s.bodyError(err)
		}
		return errorf(http.StatusBadRequest, "request body must hold exactly one JSON object, found data after it")
	}
	return nil
}

// bodyError turns a JSON decoding error into an *Error with a message that
// names the field and what it must be, not Go types.
func (s *Server) bodyError(err error) *Error {
	var (
		tooLarge  *http.MaxBytesError
		syntax    *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
		fieldErr  *fieldError
		wantField = func(field string) string {
			if field == "" {
				return "request body"
			}
			return strconv.Quote(field)
		}
	)
	switch {
	case errors.As(err, &tooLarge):
		return errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", tooLarge.Limit)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "request body is empty, expected a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "request body is truncated JSON")
	case errors.As(err, &syntax):
		return errorf(http.StatusBadRequest, "request body is not valid JSON: %s (at byte %d)", syntax.Error(), syntax.Offset)
	case errors.As(err, &fieldErr):
		return errorf(http.StatusBadRequest, "%s", fieldErr.Error())
	case errors.As(err, &typeErr):
		return errorf(http.StatusBadRequest, "%s must be %s, got %s", wantField(typeErr.Field), describeType(typeErr.Type), typeErr.Value)
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	return errorf(http.StatusBadRequest, "request body: %s", msg)
}

// describeType names a Go type the way a JSON client thinks of it.
func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Struct, reflect.Map:
		return "a JSON object"
	}
	return "a " + t.Kind().String()
}

// fieldError is a decoding error about one named field.
type fieldError struct {
	field string
	msg   string
}

func (e *fieldError) Error() string { return e.field + " " + e.msg }

// parsePort reads a port given as digits ("8080"), as the recipe's webhook
// passed every value as text. Signs, fractions, exponents and spaces are
// refused, and so is anything outside 1-65535.
func parsePort(field, s string) (int, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, &fieldError{field, fmt.Sprintf("must be a whole number between 1 and 65535, got %s", quoteInput(s))}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, &fieldError{field, fmt.Sprintf("%s is out of range 1-65535", truncate(s))}
	}
	return n, nil
}

// quoteInput shows client input safely in a message.
func quoteInput(s string) string { return strconv.Quote(truncate(s)) }

// readFlexPort parses raw (a JSON value, nil when absent) as a port given as
// a JSON number (8080) or a string ("8080"): the recipe's sidecars sent both.
func readFlexPort(field string, raw json.RawMessage) (int, error) {
	s := strings.TrimSpace(string(raw))
	switch {
	case len(raw) == 0 || s == "null":
		return 0, &fieldError{field, "is required"}
	case strings.HasPrefix(s, `"`):
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return 0, &fieldError{field, "must be a port number"}
		}
		return parsePort(field, str)
	case strings.HasPrefix(s, "-") || (s[0] >= '0' && s[0] <= '9'):
		// A JSON number: its literal text must be plain digits.
		return parsePort(field, s)
	}
	return 0, &fieldError{field, fmt.Sprintf("must be a port number, got %s", quoteInput(s))}
}

// readString parses raw (a JSON value, nil when absent) as a required string.
func readString(field string, raw json.RawMessage) (string, error) {
	s := strings.TrimSpace(string(raw))
	if len(raw) == 0 || s == "null" {
		return "", &fieldError{field, "is required"}
	}
	var str string
	if err := json.Unmarshal(raw, &str); err != nil {
		return "", &fieldError{field, fmt.Sprintf("must be a string, got %s", quoteInput(s))}
	}
	if str == "" {
		return "", &fieldError{field, "is required"}
	}
	return str, nil
}

// maxTTL bounds a backend lease: long enough for anything real, short enough
// that Now()+ttl can never overflow.
const maxTTL = 366 * 24 * time.Hour

// ttl is a lease length given as a Go duration string ("90s", "10m") or a
// number of seconds (90). 0 means no lease.
type ttl time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (t *ttl) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		*t = 0
		return nil
	}
	var d time.Duration
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return &fieldError{"ttl", "must be a duration such as \"90s\" or a number of seconds"}
		}
		parsed, err := time.ParseDuration(str)
		if err != nil {
			secs, ferr := strconv.ParseFloat(str, 64)
			if ferr != nil {
				return &fieldError{"ttl", fmt.Sprintf("must be a duration such as \"90s\" or a number of seconds, got %s", quoteInput(str))}
			}
			parsed, err = secondsToDuration(secs)
			if err != nil {
				return err
			}
		}
		d = parsed
	} else {
		secs, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return &fieldError{"ttl", fmt.Sprintf("must be a duration such as \"90s\" or a number of seconds, got %s", quoteInput(s))}
		}
		if d, err = secondsToDuration(secs); err != nil {
			return err
		}
	}
	if d < 0 {
		return &fieldError{"ttl", fmt.Sprintf("must not be negative, got %s", d)}
	}
	if d > maxTTL {
		return &fieldError{"ttl", fmt.Sprintf("must be at most %s, got %s", maxTTL, d)}
	}
	*t = ttl(d)
	return nil
}

func secondsToDuration(secs float64) (time.Duration, error) {
	if math.IsNaN(secs) || math.IsInf(secs, 0) || math.Abs(secs) > maxTTL.Seconds()*2 {
		return 0, &fieldError{"ttl", fmt.Sprintf("%v seconds is out of range", secs)}
	}
	return time.Duration(secs * float64(time.Second)), nil
}
