//go:build unix && !linux

package reuse

import "os"

// executable returns the path Upgrade starts the new process from: this
// program's file, by its path (os.Executable; on OpenBSD and AIX, Go finds
// it from argv[0] and PATH). Who else could replace it is not checked here.
func executable() (string, error) {
	return os.Executable()
}
