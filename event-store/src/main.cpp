#include "app.h"
#include "engram/config/service_main.h"

int main(int argc, char** argv) {
    using namespace engram;
    return config::service_main<event_store::App>(argc, argv, "engram-event-store", "the append-only event log over HTTP.",
                                                  event_store::config_spec(), "EVENT_STORE_LISTEN");
}
