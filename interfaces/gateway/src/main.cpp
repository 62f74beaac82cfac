#include "app.h"
#include "engram/config/service_main.h"

int main(int argc, char** argv) {
    using namespace engram;
    return config::service_main<gateway::App>(argc, argv, "engram-gateway",
                                              "ingress (POST /trigger, signed webhooks, the web chat at /) into the event store.",
                                              gateway::config_spec(), "GATEWAY_LISTEN");
}
