// Built into the ThreadSanitizer build only (ENLIGHTEN_TSAN): what TSan is told to ignore.
//
// libvncserver (backends/vnc, loaded with dlopen) is not instrumented, so TSan sees only the
// pthread calls it makes, not its own ordering of them, and reports races between its threads
// inside it: a client thread that leaves by itself destroys its condition variable while
// rfbShutdownServer signals it (libvncserver 0.9.14, seen in console_test's VncServer test).
// called_from_lib ignores what the library's own code does; our callbacks, which its threads
// run (the key and pointer events, the client count), are instrumented and still checked.
extern "C" const char* __tsan_default_suppressions();
extern "C" const char* __tsan_default_suppressions() { return "called_from_lib:libvncserver.so.1\n"; }
// What the link asks for, so that this object (and its strong definition above, not the
// runtime's weak default) is taken from the archive.
extern "C" void enlighten_tsan_suppressions_anchor();
extern "C" void enlighten_tsan_suppressions_anchor() {}
