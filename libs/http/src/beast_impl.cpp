// The one translation unit that compiles Boost.Beast and Boost.Asio (incl. SSL). Everything else uses
// BOOST_BEAST_SEPARATE_COMPILATION / BOOST_ASIO_SEPARATE_COMPILATION (PUBLIC definitions of engram_http)
// and links against the definitions compiled here.
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
