package k8s

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// maxRouteName is the longest route name drawbridge accepts
// ([a-z0-9][a-z0-9._-]{0,62}).
const maxRouteName = 63

// routeStem is the part of a route name shared by every route of one
// Service: prefix + namespace + "_" + name + "_". Namespace and Service
// names are DNS labels ([a-z0-9-]), so "_" never occurs inside them and the
// stem of one Service is never the stem of another. When the full name
// would not fit in a route name, the two are shortened and a hash of the
// whole pair keeps the stem unique.
func routeStem(prefix, namespace, name string) string {
	full := prefix + namespace + "_" + name + "_"
	// Room for the longest port number (5 digits).
	if len(full)+5 <= maxRouteName {
		return full
	}
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	h := hex.EncodeToString(sum[:])[:10]
	// prefix + ns' + "_" + name' + "." + h + "_" + 5 digits
	room := maxRouteName - len(prefix) - len(h) - 3 - 5
	if room < 2 {
		// A prefix so long that nothing of the names fits: the hash alone.
		return prefix + h + "_"
	}
	ns, n := namespace, name
	for len(ns)+len(n) > room {
		if len(ns) >= len(n) {
			ns = ns[:len(ns)-1]
		} else {
			n = n[:len(n)-1]
		}
	}
	return prefix + ns + "_" + n + "." + h + "_"
}

// routeName names the route of one port of a Service: its stem and the
// Service port's number.
func routeName(prefix, namespace, name string, servicePort int32) string {
	return routeStem(prefix, namespace, name) + strconv.Itoa(int(servicePort))
}

// ownedByService reports whether a route named routeName belongs to the
// Service whose stem is stem: the stem followed by digits only.
func ownedByService(stem, routeName string) bool {
	rest, ok := strings.CutPrefix(routeName, stem)
	if !ok || rest == "" || len(rest) > 5 {
		return false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
