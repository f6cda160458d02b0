//! Symphony: RS512 login, Datafeed v2 loop, pod and agent endpoints, MessageML/PresentationML.
